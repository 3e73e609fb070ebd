"""The OpenAPI 3.1 document served at /openapi.json, describing exactly what the ingress accepts."""

from serve.schema import IGNORED_FIELDS, MAX_CFG_SCALE, MAX_PARTIAL_IMAGES


def _error_response(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


EDIT_FORM = {
    "type": "object",
    "required": ["image", "prompt"],
    "additionalProperties": False,  # any other field is refused with a 400 naming it
    "properties": {
        "image": {
            "description": "1 image file (1-3 for Qwen-Image-Edit-Plus models, also as `image[]`): PNG, JPEG or WebP.",
            "oneOf": [
                {"type": "string", "format": "binary"},
                {"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1, "maxItems": 3},
            ],
        },
        "image[]": {"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1, "maxItems": 3},
        "prompt": {"type": "string", "minLength": 1, "description": "The edit instruction, in any language. The text "
                   "encoder's special tokens (e.g. <|image_pad|>, <|im_end|>) are refused."},
        "n": {"type": "integer", "minimum": 1, "maximum": 4, "default": 1, "description": "Images to make; image i uses seed + i."},
        "size": {"type": "string", "pattern": "^(auto|[0-9]+x[0-9]+)$", "default": "auto",
                 "description": "WIDTHxHEIGHT (multiples of the model's latent grid, 16 for real models) or auto. "
                 "InstructPix2Pix models take only auto: they edit at the input's size."},
        "response_format": {"type": "string", "enum": ["b64_json"], "default": "b64_json"},
        "output_format": {"type": "string", "enum": ["png", "jpeg", "webp"], "default": "png"},
        "output_compression": {"type": "integer", "minimum": 0, "maximum": 100, "default": 100,
                               "description": "JPEG/WebP quality; 100 is best. Ignored for PNG."},
        "model": {"type": "string", "description": "Optional; must name the served model (see /v1/models)."},
        "negative_prompt": {"type": "string", "description": "What to steer away from. Default: ' ' for "
                            "Qwen-Image-Edit (true CFG on), none (the empty prompt) for InstructPix2Pix."},
        "seed": {"type": "integer", "minimum": 0, "description": "Same seed and inputs give the same image; random if unset."},
        "num_inference_steps": {"type": "integer", "minimum": 1,
                                "description": "Default: the model's; at most `limits.max_steps` (200); at least what "
                                "the model's scheduler can run (2 for Qwen-Image-Edit's)."},
        "true_cfg_scale": {"type": "number", "minimum": 0, "maximum": MAX_CFG_SCALE, "default": 4.0,
                           "description": "Qwen-Image-Edit only: true classifier-free guidance scale; <= 1 turns it off."},
        "guidance_scale": {"type": "number", "minimum": 0, "maximum": MAX_CFG_SCALE, "default": 7.5,
                           "description": "InstructPix2Pix only: text guidance s_T, how strongly the instruction "
                           "applies (5-10 typical). Guidance runs when it is > 1 and image_guidance_scale >= 1."},
        "image_guidance_scale": {"type": "number", "minimum": 0, "maximum": MAX_CFG_SCALE, "default": 1.5,
                                 "description": "InstructPix2Pix only: image guidance s_I, how closely the output "
                                 "follows the input image (1-1.5 typical)."},
        "timeout": {"type": "number", "minimum": 1, "description": "This request's deadline in seconds (504 past it)."},
        "stream": {"type": "boolean", "default": False, "description": "Answer as Server-Sent Events (n must be 1). "
                   "Invalid input is refused with the same JSON 4xx as without streaming, before any event."},
        "partial_images": {"type": "integer", "minimum": 0, "maximum": MAX_PARTIAL_IMAGES, "default": 0,
                           "description": "Previews streamed before the final image."},
        "stream_progress": {"type": "boolean", "default": False,
                            "description": "Also stream an image_edit.progress event per denoising step."},
        **{name: {"type": "string", "description": "Accepted for OpenAI compatibility; ignored."} for name in IGNORED_FIELDS},
    },
}

OPENAPI = {
    "openapi": "3.1.0",
    "info": {
        "title": "qwen-edit-cluster",
        "version": "1.0.0",
        "description": "Instruction-based image editing, compatible with OpenAI's Images edit API.",
    },
    "paths": {
        "/v1/images/edits": {
            "post": {
                "summary": "Edit image(s) following a written instruction",
                "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": EDIT_FORM}}},
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
                    "503": _error_response("At capacity or a replica restarting; see Retry-After."),
                    "504": _error_response("The edit did not finish within the request timeout."),
                },
            }
        },
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
