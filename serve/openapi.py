"""The OpenAPI 3.1 document served at /openapi.json. The edit form's schema is the JSON schema of the
model the ingress validates with (serve/schema.py), so it states exactly what the server enforces."""

from pydantic import BaseModel


def _error_response(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def openapi_document(form_model: type[BaseModel]) -> dict:
    # The models the form's fields are made of (`lora`'s entries, `cache`'s methods) go to the document's
    # components, where its references resolve.
    form = form_model.model_json_schema(ref_template="#/components/schemas/{model}")
    models = form.pop("$defs", {})
    # OpenAI's SDK sends several images as `image[]`: the same field under a second name
    form["properties"]["image[]"] = form["properties"]["image"]
    form["required"] = [name for name in form.get("required", []) if name != "image"]  # either name will do
    components = {**DOCUMENT["components"], "schemas": {**DOCUMENT["components"]["schemas"], **models}}
    return {**DOCUMENT, "components": components, "paths": {**DOCUMENT["paths"], "/v1/images/edits": _edit_path(form)}}


def _edit_path(form: dict) -> dict:
    return {
        "post": {
            "summary": "Edit image(s) following a written instruction",
            "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": form}}},
            "responses": {
                "200": {
                    "description": "The edited image(s). `Server-Timing` says where the time went.",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/ImagesResponse"}},
                        "text/event-stream": {
                            "description": "With stream=true: image_edit.partial_image, image_edit.progress, "
                            "image_edit.completed and error events, each `data` a JSON object with `type`.",
                        },
                    },
                },
                "400": _error_response("An invalid field; `param` names it."),
                "413": _error_response("The request or an image is too large."),
                "422": _error_response("An edited image crossed its guard's limits and the guard's action is fail."),
                "503": _error_response("At capacity or a replica restarting; see Retry-After."),
                "504": _error_response("The edit did not finish within the request timeout."),
            },
        }
    }


DOCUMENT = {
    "openapi": "3.1.0",
    "info": {
        "title": "qwen-edit-cluster",
        "version": "1.0.0",
        "description": "Instruction-based image editing, compatible with OpenAI's Images edit API.",
    },
    "paths": {
        "/": {
            "get": {
                "summary": "The editing page for people",
                "responses": {"200": {"description": "One HTML page; no external resources.", "content": {"text/html": {}}}},
            }
        },
        "/v1/models": {
            "get": {
                "summary": "The served model",
                "responses": {"200": {"description": "OpenAI's model list shape.", "content": {"application/json": {}}}},
            }
        },
        "/healthz": {
            "get": {
                "summary": "Whether every stage can serve",
                "responses": {
                    "200": {"description": "Every stage has a healthy replica or can start one."},
                    "503": _error_response("A stage is unhealthy or failed to deploy."),
                },
            }
        },
    },
    "components": {
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {
                        "type": "object",
                        "required": ["message", "type", "param", "code"],
                        "properties": {
                            "message": {"type": "string"},
                            "type": {"type": "string"},
                            "param": {"type": ["string", "null"]},
                            "code": {"type": "integer"},
                        },
                    }
                },
            },
            "ImagesResponse": {
                "type": "object",
                "required": ["created", "data"],
                "properties": {
                    "created": {"type": "integer"},
                    "data": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {"b64_json": {"type": "string"}, "seed": {"type": "integer"}},
                        },
                    },
                    "output_format": {"type": "string"},
                    "size": {"type": "string"},
                    "timings": {"type": "object", "additionalProperties": {"type": "number"},
                                "description": "Seconds spent queued and working in each stage."},
                },
            },
        }
    },
}
