"""Errors as HTTP responses in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`."""

import asyncio
import logging

from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from deployments.errors import DeadlineExceededError, EditError, InvalidInputError, OverloadedError

logger = logging.getLogger(__name__)

# Ray's ways of saying "no replica could take or finish this": all retryable.
UNAVAILABLE = (BackPressureError, DeploymentUnavailableError, ActorDiedError, ActorUnavailableError, RayActorError)


def as_edit_error(error: BaseException) -> EditError:
    """The EditError a failure means to the client; unexpected ones are logged with their traceback."""
    if isinstance(error, EditError):  # also Ray's RayTaskError wrappers of an EditError
        return error
    if isinstance(error, HTTPException) and 400 <= error.status_code < 500:  # Starlette's form parser
        return InvalidInputError("body", f"is not valid multipart/form-data: {error.detail}")
    if isinstance(error, BackPressureError):
        return OverloadedError("the server is at capacity; retry shortly")
    if caused_by(error, UNAVAILABLE):  # Serve wraps a dead upstream's error
        return OverloadedError("a model replica was unavailable (restarting or scaling); retry shortly")
    if isinstance(error, (asyncio.TimeoutError, TimeoutError)):
        return DeadlineExceededError("the edit did not finish within the request timeout")
    logger.exception("edit failed unexpectedly", exc_info=error)
    return EditError("internal error while editing; the server logged the cause")


def caused_by(error: BaseException | None, kinds) -> bool:
    """Whether `error`, or an error it was raised from, is one of `kinds` (Serve wraps an upstream's
    death in its own error)."""
    while error is not None:
        if isinstance(error, kinds):
            return True
        error = error.__cause__
    return False


def error_response(error: EditError, headers: dict[str, str] | None = None) -> JSONResponse:
    headers = dict(headers or {})
    if isinstance(error, OverloadedError):
        headers["Retry-After"] = str(error.retry_after_s)
    return JSONResponse({"error": error_body(error)}, status_code=error.status, headers=headers)


def error_body(error: EditError) -> dict:
    return {"message": error.message, "type": error.type, "param": error.param, "code": error.status}
