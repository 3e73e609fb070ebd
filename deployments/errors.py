"""The engine's error types: one per HTTP status family, so callers can map them without guessing.

Every error names what was wrong and what is allowed; the ingress turns them into OpenAI-shaped
responses (`{"error": {"message", "type", "param", "code"}}`).
"""


class EditError(Exception):
    """Base of all errors an edit can end with. `status` is the HTTP status it maps to."""

    status = 500
    type = "server_error"

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidInputError(EditError):
    """A field of the request is missing, malformed or out of range (HTTP 400). `param` names the field."""

    status = 400
    type = "invalid_request_error"

    def __init__(self, param: str, message: str):
        super().__init__(f"{param}: {message}", param)


class ModelLoadError(EditError):
    """The model could not be found or loaded (a deployment problem, not the client's)."""
