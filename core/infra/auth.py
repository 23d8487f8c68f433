"""Who may talk to our HTTP surfaces (the API, the supervisor's control surface, the memory
owner, the fault proxy's API): with a token configured (`JOBHARNESS_API_TOKEN`), every request
but the open paths (`/health`) must carry `Authorization: Bearer TOKEN`, compared in constant
time; without one, 401 and nothing else (the body never says what was expected).

Where a surface may listen without a token: on loopback only. Binding anywhere else without a
token is refused unless the operator says `--insecure`, so a surface is never exposed by
accident."""

from __future__ import annotations

import hmac
import ipaddress
import json
import socket
from collections.abc import Iterable
from typing import Any

from core.errors import ConfigError

OPEN_PATHS = frozenset({"/health"})


def auth_headers(token: str | None) -> dict[str, str]:
    """What a client of ours sends to a surface that asks for `token`."""
    return {"Authorization": f"Bearer {token}"} if token else {}


class TokenGate:
    """ASGI middleware: 401 for an HTTP request without the bearer token (when one is set)."""

    def __init__(self, app: Any, token: str | None,
                 open_paths: Iterable[str] = OPEN_PATHS) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode() if token else None
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.expected is None or scope["type"] != "http" \
                or scope.get("path") in self.open_paths:
            await self.app(scope, receive, send)
            return
        given = b""
        for name, value in scope.get("headers") or ():
            if name == b"authorization":
                given = value
                break
        if hmac.compare_digest(given, self.expected):
            await self.app(scope, receive, send)
            return
        body = json.dumps({"error": "unauthorized: this surface needs the bearer token "
                           "(JOBHARNESS_API_TOKEN)", "status": 401}).encode()
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": body})


def is_loopback(host: str) -> bool:
    """`host` only ever reaches this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(info[4][0]).is_loopback
                       for info in socket.getaddrinfo(host, None))
        except (OSError, ValueError):
            return False


def check_bind(host: str, token: str | None, *, insecure: bool, surface: str) -> None:
    """Refuse to listen beyond loopback without a token, unless told `--insecure`."""
    if token or insecure or is_loopback(host):
        return
    raise ConfigError(f"{surface}: refusing to listen on {host} without a token; set "
                      "JOBHARNESS_API_TOKEN (clients send it as a bearer token), bind to "
                      "127.0.0.1, or pass --insecure to accept an open surface")
