"""Errors as the OpenAI API shapes them: `{"error": {"message", "type", "param", "code"}}` with the HTTP status
that says whose fault it was. FastAPI's own 422 validation answer becomes OpenAI's 400; nothing returns a
traceback."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

log = logging.getLogger("qeff_compiler.serve")


class ApiError(Exception):
    """An error answer: status, message, OpenAI's error type, the request field at fault and a short code."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code

    def body(self) -> dict[str, dict[str, str | None]]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param)


def queue_full(limit: int) -> ApiError:
    return ApiError(
        429,
        f"the server's queue is full ({limit} requests waiting); retry later",
        kind="rate_limit_error",
        code="queue_full",
    )


def shutting_down() -> ApiError:
    return ApiError(
        503, "the server is shutting down and admits no new requests", kind="server_error", code="shutting_down"
    )


def validation_error(exc: RequestValidationError) -> ApiError:
    """The first problem pydantic found, as one sentence naming the field ('body.' dropped)."""
    first = exc.errors()[0]
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    # a union reports each alternative's type as a location part: keep the field path only
    field = ".".join(part for part in location if not _is_type_tag(part)) or None
    message = str(first.get("msg", "invalid request"))
    if first.get("type") == "json_invalid":
        return bad_request(f"the request body is not valid JSON: {first.get('ctx', {}).get('error', message)}")
    if first.get("type") == "extra_forbidden":
        return bad_request(f"unknown or unsupported field {field!r}", field)
    if first.get("type") == "missing":
        return bad_request(f"missing required field {field!r}", field)
    given = first.get("input")
    shown = f" (got {given!r})" if not isinstance(given, (dict, list)) else ""
    return bad_request(f"{field}: {message}{shown}" if field else f"{message}{shown}", field)


def _is_type_tag(part: str) -> bool:
    """pydantic names union branches like 'str', 'list[int]', 'constrained-str', 'literal[1]'."""
    return part in ("str", "int", "float", "bool", "none") or "[" in part or part.startswith("constrained-")


def install(app: FastAPI) -> None:
    """Route every error the app can meet through the OpenAI shape."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc).response()

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return ApiError(exc.status_code, str(exc.detail), kind=kind).response()

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error serving %s", request.url.path, exc_info=exc)
        return ApiError(500, f"internal server error ({type(exc).__name__})", kind="server_error").response()
