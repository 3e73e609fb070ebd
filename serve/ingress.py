"""The HTTP ingress: OpenAI-compatible routes on Starlette, chaining the stage deployments.

An edit is Encoder -> Denoiser (once per image of `n`, seeds seed, seed+1, ...) -> Decoder
(serve/stage_calls.py): the ingress watches each stage's result and hands it to the next stage as an
object ref, so tensors go replica to replica through Ray's object store and never through here; a
call whose replica was lost is made again, once.
"""

import asyncio
import base64
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import ray.util.metrics
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from deployments import metrics
from deployments.contracts import EditedImage, EditRequest
from deployments.errors import EditError, InvalidInputError, OverloadedError, PayloadTooLargeError
from deployments.media.images import OutputSpec
from deployments.workflows.guards import VERDICTS, GuardFailedError
from serve.capacity import StageCapacity, serving
from serve.capacity import observe as observe_stages
from serve.chained_edit import ChainedEdit
from serve.errors import as_edit_error, error_body, error_response
from serve.openapi import openapi_document
from serve.result_cache import CachedResults
from serve.schema import EditForm, ServedModel, parse_edit_form, read_uploads
from serve.settings import AppSettings
from serve.stage_calls import StagedEdit
from serve.stage_protocol import DEFAULT_OPTIONS, adapters_id

logger = logging.getLogger(__name__)

PAGE = (Path(__file__).parent / "web" / "index.html").read_text()  # the editing page at GET /


@serve.deployment(name="Ingress", **DEFAULT_OPTIONS)
@serve.ingress()
class Ingress:
    def __init__(
        self,
        encoder: DeploymentHandle,
        denoiser: DeploymentHandle,
        decoder: DeploymentHandle,
        settings: AppSettings,
        served: ServedModel,
        result_cache: DeploymentHandle | None = None,
    ):
        metrics.bind(ray.util.metrics)
        metrics.GUARD_VERDICTS.start_at_zero(model=served.name, verdict=VERDICTS)  # 0 on the dashboard before any guard
        self.encoder, self.denoiser, self.decoder = encoder, denoiser, decoder
        self.results = None if result_cache is None else CachedResults(
            result_cache, served.spec.model_id, served.lora.sources(), served.engine, settings.result_cache.call_timeout_s
        )
        self.settings = settings
        self.served = served
        self.served_model = served.name
        self.form_model = served.form_model(settings.limits, settings.request_timeout_s)
        self.openapi_document = openapi_document(self.form_model)
        self.capacity = StageCapacity(serve.get_replica_context().app_name, settings.stage_demands())
        self._watching: asyncio.Task | None = None
        self.parameters_schema = served.spec.request_model(settings.limits, served.lora).model_json_schema()  # /v1/models
        self.created = int(time.time())

    def __serve_build_asgi_app__(self) -> Starlette:
        routes = [
            ("/", self.page, "GET"),
            ("/v1/images/edits", self.edit, "POST"),
            ("/v1/models", self.models, "GET"),
            ("/healthz", self.healthz, "GET"),
            ("/openapi.json", self.openapi, "GET"),
        ]
        return Starlette(routes=[Route(path, _counted(path, handler), methods=[method]) for path, handler, method in routes])

    async def edit(self, http: Request) -> Response:
        request_id = uuid.uuid4().hex
        headers = {"X-Request-Id": request_id}
        started = time.time()
        images_asked = 0
        edit = None
        try:
            form = await self._read_form(http)
            try:
                uploads = await read_uploads(form, self.settings.limits, self.form_model)
                parsed = parse_edit_form(form, uploads, self.form_model)
            finally:
                await form.close()
            self._watch_capacity()
            self.capacity.refuse_if_unplaceable()  # a stage without capacity: a fast 503, not a wait until the deadline
            request = dataclasses.replace(parsed.request, request_id=request_id, timings={"sent_at": time.time()})
            images_asked = len(parsed.seeds)
            timeout = parsed.timeout_s or self.settings.request_timeout_s
            if parsed.stream:
                edit = self._staged(request)
                steps = await asyncio.wait_for(self._start_stream(edit, parsed), timeout)
                events = self._stream(edit, steps, parsed, timeout - (time.time() - started), started)
                return StreamingResponse(events, media_type="text/event-stream", headers=headers)
            edit = ChainedEdit(self._staged, request, parsed.links)
            chains = await asyncio.wait_for(edit.images(parsed.seeds), timeout)
        except Exception as e:  # every failure becomes an OpenAI-shaped error, never a stack trace
            return error_response(self._failed(e, images_asked, edit), _with_retries(headers, edit))
        total_s = time.time() - started
        self._succeeded([chain[-1] for chain in chains], total_s)
        return self._edit_response(chains, parsed.chain_intermediates, total_s, _with_retries(headers, edit))

    def _succeeded(self, images: list[EditedImage], total_s: float) -> None:
        metrics.IMAGES.inc(len(images), model=self.served_model, status="ok")
        metrics.REQUEST_SECONDS.observe(total_s, model=self.served_model)
        for image in images:
            if image.guard is not None:
                metrics.GUARD_VERDICTS.inc(model=self.served_model, verdict=image.guard["verdict"])

    def _failed(self, exception: Exception, images_asked: int, edit: StagedEdit | ChainedEdit | None) -> EditError:
        """The error `exception` means to the client, counted (with the images it cost, if any). A
        deadline that passed while a lost replica's work was being redone means no capacity (503,
        retry), not a slow edit."""
        if edit is not None and edit.retried and isinstance(exception, TimeoutError):
            exception = OverloadedError(
                f"a model replica was lost ({', '.join(edit.retried)}) and no other finished the edit within its deadline; retry shortly"
            )
        error = as_edit_error(exception)
        metrics.ERRORS.inc(kind=error.kind)
        if isinstance(error, GuardFailedError):
            metrics.GUARD_VERDICTS.inc(model=self.served_model, verdict="failed")
        metrics.IMAGES.inc(images_asked, model=self.served_model, status="error")  # 0 adds nothing
        return error

    async def _read_form(self, http: Request):
        if not http.headers.get("content-type", "").startswith("multipart/form-data"):
            raise InvalidInputError("body", "must be multipart/form-data with the image file(s) and the fields")
        limit = self.settings.limits.max_request_bytes
        declared = http.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLargeError("body", f"the request may be at most {limit} bytes, got {declared}")
        return await _capped(http, limit).form(max_files=8, max_fields=64)

    def _staged(self, request: EditRequest) -> StagedEdit:
        """`request`'s way through the stages; with adapters, the Denoiser calls go to a replica that
        holds them if any does."""
        denoiser = self.denoiser.options(multiplexed_model_id=adapters_id(request.parameters.adapters))
        return StagedEdit(self.encoder, denoiser, self.decoder, request, self.results, self.capacity)

    async def _start_stream(self, edit: StagedEdit, parsed: EditForm):
        """The Denoiser's event stream for the request, once the request is in its loop: whatever the
        Encoder refuses (or an overloaded Denoiser) fails here, before any response has started, so a
        streaming client gets the same 4xx / 503 as a non-streaming one."""
        steps = edit.denoising_events(parsed.seeds[0], parsed.partial_images)
        try:  # the stream's first event says the request is in the loop (ACCEPTED)
            await self.capacity.serving("denoise", steps.__anext__)
        except BaseException:  # refused, failed, timed out, or the client went away
            await steps.aclose()
            raise
        return steps

    async def _stream(self, edit: StagedEdit, steps, parsed: EditForm, timeout: float, started: float):
        """Server-Sent Events in OpenAI's shapes: `image_edit.partial_image` previews (the Denoiser's
        predicted clean latents, decoded as small JPEGs), then `image_edit.completed`; with
        `stream_progress`, an `image_edit.progress` event per step (an extension). A failure after the
        stream has started is an `error` event."""
        partial_index = 0
        try:
            async with asyncio.timeout(timeout):
                async for event in steps:
                    if isinstance(event, dict) and "step" in event:
                        if parsed.stream_progress:
                            yield _sse("image_edit.progress", {**event, "stage": "denoise"})
                    elif isinstance(event, dict):
                        preview = dataclasses.replace(event["preview"], output=PREVIEW_OUTPUT)
                        image = await edit.decoded(preview)
                        yield _sse("image_edit.partial_image", {**_image_event(image), "partial_image_index": partial_index})
                        partial_index += 1
                    else:
                        image = await edit.guarded(await edit.decoded(event), parsed.seeds[0])
                        yield _sse("image_edit.completed", {**_image_event(image), **_extensions(image), "usage": NO_TOKEN_USAGE})
                        self._succeeded([image], time.time() - started)
        except Exception as e:  # the response has started: the error travels as an event
            yield _sse("error", {"error": error_body(self._failed(e, 1, edit))})
        finally:  # also when the client disconnects: the request leaves the denoising batch
            await steps.aclose()

    def _edit_response(self, chains: list[list[EditedImage]], intermediates: bool, total_s: float, headers: dict) -> Response:
        """Each image's entry: its chain's last image, and with `intermediates` the images before it."""
        images = [chain[-1] for chain in chains]
        timings = {name: round(value, 4) for name, value in images[0].timings.items() if name != "sent_at"}
        timings["total"] = round(total_s, 4)
        headers["Server-Timing"] = ", ".join(f"{name};dur={value * 1000:.1f}" for name, value in timings.items())
        data = [_entry(image) for image in images]
        if intermediates:
            for entry, chain in zip(data, chains):
                entry["intermediates"] = [_entry(image) for image in chain[:-1]]
        body = {
            "created": int(time.time()),
            "data": data,
            "output_format": images[0].format,
            "size": f"{images[0].width}x{images[0].height}",
            "timings": timings,
        }
        return JSONResponse(body, headers=headers)

    async def models(self, http: Request) -> Response:
        """The served model and, as vLLM lists LoRA modules, each adapter with `parent` = the model."""
        owner = {"object": "model", "created": self.created, "owned_by": "qwen-edit-cluster"}
        model = {
            "id": self.served_model, **owner,
            # extensions: the family and the JSON schema of what its requests may set (the page's fields)
            "family": self.served.spec.declared.family,
            "parameters": self.parameters_schema,
        }
        adapters = [
            {
                "id": name, **owner, "parent": self.served_model, "root": name,  # never its file's path on the server
                # extensions: how the adapter applies when a request names it
                "scale": adapter.scale, "scheduler": adapter.scheduler, "defaults": adapter.defaults,
                "description": adapter.description,
            }
            for name, adapter in self.served.lora.adapters.items()
        ]
        return JSONResponse({"object": "list", "data": [model, *adapters]})

    async def healthz(self, http: Request) -> Response:
        """200 when every stage can serve (also while one replaces a lost replica on another node), else
        503 — a stage unhealthy, or without a replica and unable to place one (serve/capacity.py) —
        never an error of its own: while the app is being (re)deployed Serve's status may lack the app
        or a stage, or the controller may not answer."""
        self._watch_capacity()
        try:
            # a controller call and a GCS call: off the event loop
            self.capacity.update(*await asyncio.to_thread(observe_stages, self.capacity.app))
        except Exception as e:
            logger.warning("health check could not read Serve's status: %r", e)
            return error_response(OverloadedError(f"the stages' status is unavailable ({type(e).__name__}); retry shortly"))
        states = self.capacity.states
        unhealthy = [name for name, (state, replicas) in states.items() if not serving(state, replicas)]
        if unhealthy:
            return error_response(OverloadedError(f"stage(s) {unhealthy} cannot serve now: {states}"))
        try:
            self.capacity.refuse_if_unplaceable()
        except OverloadedError as e:
            return error_response(e)
        return JSONResponse({"status": "ok", "model": self.served_model, "stages": {name: state for name, (state, _) in states.items()}})

    def _watch_capacity(self) -> None:
        """Starts the stages' capacity watch (serve/capacity.py) on this replica's event loop, once."""
        if self._watching is None or self._watching.done():
            self._watching = asyncio.ensure_future(self.capacity.watch())

    async def openapi(self, http: Request) -> Response:
        return JSONResponse(self.openapi_document)

    async def page(self, http: Request) -> Response:
        return HTMLResponse(PAGE)


PREVIEW_OUTPUT = OutputSpec(format="jpeg", compression=75)
NO_TOKEN_USAGE = {  # the SDK's completed event carries token usage; this model has none to report
    "input_tokens": 0, "output_tokens": 0, "total_tokens": 0,
    "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
}


def _image_event(image: EditedImage) -> dict:
    return {
        "b64_json": base64.b64encode(image.data).decode("ascii"), "created_at": int(time.time()),
        "output_format": image.format, "size": f"{image.width}x{image.height}", "background": "opaque",
        "quality": "auto",
    }


def _entry(image: EditedImage) -> dict:
    """An image's entry in a response's `data`."""
    return {"b64_json": base64.b64encode(image.data).decode("ascii"), "seed": image.seed, **_extensions(image)}


def _extensions(image: EditedImage) -> dict:
    """What an image's entry says beyond OpenAI's fields: its quality report, its guard's verdict, with
    step caching its model forwards computed, reused and predicted, with the result cache hit or miss."""
    # `quality_report`: OpenAI's events already have a `quality` (the quality asked for)
    extensions = {"cache": image.cache, "quality_report": image.quality, "guard": image.guard, "result_cache": image.result_cache}
    return {name: value for name, value in extensions.items() if value is not None}


def _with_retries(headers: dict, edit: StagedEdit | ChainedEdit | None) -> dict:
    """`headers`, and X-Stage-Retries naming the stages whose call was made again after a lost replica."""
    if edit is not None and edit.retried:
        return {**headers, "X-Stage-Retries": ",".join(edit.retried)}
    return headers


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps({'type': event, **data})}\n\n"


def _capped(http: Request, limit: int) -> Request:
    """`http` with a body stream that fails with 413 as soon as more than `limit` bytes have arrived:
    an oversized body (also one without a Content-Length) is refused while it streams in."""
    received = 0

    async def receive():
        nonlocal received
        message = await http.receive()
        received += len(message.get("body", b""))
        if received > limit:
            raise PayloadTooLargeError("body", f"the request may be at most {limit} bytes")
        return message

    return Request(http.scope, receive)


def _counted(route: str, handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """`handler`, counting its responses by route and status code."""

    async def endpoint(http: Request) -> Response:
        response = await handler(http)
        metrics.HTTP_REQUESTS.inc(route=route, code=response.status_code)
        return response

    return endpoint
