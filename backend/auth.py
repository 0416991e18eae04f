"""HTTP basic auth for the backend: on when BASIC_AUTH_USER and BASIC_AUTH_PASS are set (or passed in).

Label Studio sends the credentials given in its ML backend settings (auth method BASIC_AUTH) with every call,
/health included, so every endpoint is protected. Refusals are 401 with ``WWW-Authenticate`` and a JSON error.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os

from starlette.types import ASGIApp, Receive, Scope, Send

from backend.errors import error_response

REALM = "autolabel"


def basic_auth_from_env() -> tuple[str, str] | None:
    """(user, password) from BASIC_AUTH_USER / BASIC_AUTH_PASS, or None when either is unset."""
    user, password = os.environ.get("BASIC_AUTH_USER"), os.environ.get("BASIC_AUTH_PASS")
    return (user, password) if user and password else None


def check_basic_auth(header: str | None, user: str, password: str) -> str | None:
    """None when ``header`` carries these credentials, else the reason it does not."""
    if not header:
        return "authentication required (HTTP basic auth)"
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return "authentication required (HTTP basic auth, got another scheme)"
    try:
        given_user, sep, given_password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return "malformed basic auth header"
    ok_user = hmac.compare_digest(given_user.encode(), user.encode())
    ok_password = hmac.compare_digest(given_password.encode(), password.encode())
    if not sep or not (ok_user and ok_password):
        return "wrong user name or password"
    return None


class BasicAuthMiddleware:
    """ASGI middleware refusing HTTP requests without the right basic-auth credentials."""

    def __init__(self, app: ASGIApp, user: str, password: str) -> None:
        self.app = app
        self.user = user
        self.password = password

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = None
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                header = value.decode("latin-1")
                break
        reason = check_basic_auth(header, self.user, self.password)
        if reason is not None:
            response = error_response(401, reason, {"WWW-Authenticate": f'Basic realm="{REALM}"'})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
