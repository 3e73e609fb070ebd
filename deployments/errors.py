"""The engine's error types: one per HTTP status family, so callers can map them without guessing.

Every error names what was wrong and what is allowed; the ingress turns them into OpenAI-shaped
responses (`{"error": {"message", "type", "param", "code"}}`).
"""

import logging

logger = logging.getLogger(__name__)


class EditError(Exception):
    """Base of all errors an edit can end with. `status` is the HTTP status it maps to."""

    status = 500
    type = "server_error"
    kind = "internal"  # the `kind` label of the errors metric

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param

    def __reduce__(self):
        # Errors cross process boundaries (Ray pickles them); subclasses' constructors differ.
        return _restore, (type(self), self.message, self.param)


class InvalidInputError(EditError):
    """A field of the request is missing, malformed or out of range (HTTP 400). `param` names the field."""

    status = 400
    type = "invalid_request_error"
    kind = "bad_input"

    def __init__(self, param: str, message: str):
        super().__init__(f"{param}: {message}", param)


class PayloadTooLargeError(InvalidInputError):
    """An upload or the whole request is larger than allowed (HTTP 413)."""

    status = 413


class OverloadedError(EditError):
    """No capacity right now; the same request may succeed later (HTTP 503 with Retry-After)."""

    status = 503
    type = "overloaded"
    kind = "overload"
    retry_after_s = 2


class EngineStoppedError(OverloadedError):
    """The replica's denoising engine stopped (closed, replaced, or failed as a whole) before the request
    finished; nothing is wrong with the request, and another replica can run it (HTTP 503)."""


class DeadlineExceededError(EditError):
    """The request did not finish within its deadline; its work was cancelled (HTTP 504)."""

    status = 504
    type = "timeout"
    kind = "timeout"


class ModelLoadError(EditError):
    """The model could not be found or loaded (a deployment problem, not the client's)."""


def failed_alone(error: Exception, stage: str, request_id: str) -> EditError:
    """The EditError one request ends with when its own work raised `error`: an EditError as it is;
    anything else (a bug, an input nobody anticipated) is logged with its traceback and becomes an
    internal error of that request alone."""
    if isinstance(error, EditError):
        return error
    logger.error("%s of request %s failed", stage, request_id or "?", exc_info=error)
    return EditError(f"internal error while {stage} ({type(error).__name__}); the server logged the cause")


def each_or_error(fn, items: list, stage: str) -> list:
    """fn(item) for each item, or the EditError that item alone ended with: one item's failure never
    fails its batch-mates."""
    results = []
    for item in items:
        try:
            results.append(fn(item))
        except Exception as error:
            results.append(failed_alone(error, stage, getattr(item, "request_id", "")))
    return results


def _restore(cls: type[EditError], message: str, param: str | None) -> EditError:
    error = cls.__new__(cls)
    EditError.__init__(error, message, param)
    return error
