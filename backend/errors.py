"""Error type and JSON error responses of the backend: every error body is ``{"error": "<clear message>"}``."""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

log = logging.getLogger("autolabel.backend")


class ClientError(Exception):
    """A request the backend refuses; ``status`` is a 4xx code (or 503 while the model cannot serve)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def client_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ClientError)
    log.warning("%s %s -> %d: %s", request.method, request.url.path, exc.status, exc.message)
    return error_response(exc.status, exc.message, exc.headers)


async def http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    message = exc.detail
    if exc.status_code == 404:
        message = f"no such endpoint: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.method} not allowed on {request.url.path}"
    return error_response(exc.status_code, str(message), exc.headers)


async def internal_error_handler(request: Request, exc: Exception) -> JSONResponse:
    log.exception("%s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response(500, f"internal error: {type(exc).__name__}: {exc}")
