"""APIError: a request the server refuses, with the HTTP status and the OpenAI error shape."""

from __future__ import annotations

from typing import Any

from polyvis.errors import PolyVisError

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "server_overloaded",
}


class APIError(PolyVisError):
    """A refused request: `status` is the HTTP code, `param` the request field at fault."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ):
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        super().__init__(f"{param}: {message}" if param else message)

    def __reduce__(self) -> tuple:  # the engine process sends these to the HTTP front end
        return (type(self), (self.status, self.message, self.param, self.code))

    def body(self) -> dict[str, Any]:
        """The JSON body OpenAI clients expect: {"error": {message, type, param, code}}."""
        return error_body(self.status, str(self), self.param, self.code)


def as_api_error(err: Exception) -> APIError:
    """An error as the API reports it: a 500 naming the exception unless it is an APIError (so
    it also crosses from the engine process, where not every exception class pickles)."""
    if isinstance(err, APIError):
        return err
    return APIError(500, f"generation failed: {type(err).__name__}: {err}", code="internal_error")


def error_body(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> dict:
    kind = _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
