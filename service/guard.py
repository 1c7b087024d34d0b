"""Who may ask, checked before anything else runs: the Host header (a web page that rebinds its
DNS name to 127.0.0.1 cannot reach a server on a laptop) and, when a token is set, the bearer
token. The health routes are exempt from both: they reveal nothing, and probes carry no token and
name the pod's address as the host (Kubernetes' httpGet)."""

from __future__ import annotations

import hmac

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

from .settings import Settings, is_loopback

HEALTH = frozenset({"/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready"})


def host_name(host_header: str) -> str:
    """The name of a Host header without its port: 'localhost:8000' -> 'localhost', '[::1]:80' -> '[::1]'."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class Guard:
    def __init__(self, app, settings: Settings, token: str | None):
        self.app = app
        self.loopback_only = is_loopback(settings.host)
        self.hosts = settings.accepted_hosts()
        self.expected = f"Bearer {token}".encode() if token is not None else None

    def _host_allowed(self, headers: Headers) -> bool:
        name = host_name(headers.get("host", ""))
        if self.hosts is None or name in self.hosts:
            return True
        return self.loopback_only and is_loopback(name)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in HEALTH:
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        if not self._host_allowed(headers):
            listed = ", ".join(sorted(self.hosts or ()))
            expected = f"one of {listed}"
            if self.loopback_only:
                expected = "a loopback name (localhost, 127.0.0.1, [::1])" + (f" or one of {listed}" if listed else "")
            response = JSONResponse({"error": f"Host header {headers.get('host', '')!r} is not served here; "
                                              f"expected {expected} (setting allowed_hosts)"}, 400)
            return await response(scope, receive, send)
        if self.expected is not None:
            given = headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, self.expected):
                problem = "no Authorization header" if not given else "a wrong bearer token"
                response = JSONResponse({"error": f"request has {problem}; expected 'Authorization: Bearer <token>' "
                                                  f"with the server's api_token"}, 401,
                                        headers={"WWW-Authenticate": 'Bearer realm="zdc-sim"'})
                return await response(scope, receive, send)
        await self.app(scope, receive, send)
