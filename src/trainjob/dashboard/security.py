"""Who may talk to the dashboard: whoever has its token, and no cross-site actions.

An ASGI middleware, :class:`Guard`, checks every request before the app sees it:

1. **Host header** (loopback binds only): must name this machine's loopback (``127.0.0.1``,
   ``localhost``, ``::1``) so a web page cannot reach the dashboard through DNS rebinding.
2. **Token** (on every bind, loopback included: on a shared machine every user reaches
   127.0.0.1; only ``trainjob dashboard --no-auth`` turns it off, on loopback): from
   ``Authorization: Bearer``, an ``X-Trainjob-Token`` header or the ``trainjob_token`` cookie.
   Opening any page with ``?token=`` once sets that cookie (HttpOnly, SameSite=Lax) and
   redirects to the same URL without the token, so it does not linger in the address bar.
3. **Actions** (POST and other unsafe methods): the ``Origin`` header, when sent, must be this
   server's own origin; ``Sec-Fetch-Site``, when sent, must be ``same-origin``; and the request
   must carry ``X-Trainjob-Csrf`` equal to this server's CSRF token, which only same-origin
   JavaScript can read (``GET /api/session``; the dashboard answers no CORS preflight). A form
   on another site can send none of these.

Failures answer 401 (no or wrong token) or 403 (everything else) with a JSON body saying why.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import secrets
import socket
from http.cookies import SimpleCookie
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qsl, urlencode

TOKEN_COOKIE = "trainjob_token"
TOKEN_HEADER = "x-trainjob-token"
CSRF_HEADER = "x-trainjob-csrf"
MIN_TOKEN_LENGTH = 8
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def is_loopback(host: str) -> bool:
    """True when ``host`` (an address or a name) only ever means this machine's loopback.

    ``0.0.0.0`` and ``::`` (every interface) are not loopback. A name counts as loopback only if
    every address it resolves to is.
    """
    h = host.strip().strip("[]")
    if not h:
        return False
    if h.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(h, None)
    except OSError:
        return False
    addrs = {info[4][0] for info in infos}
    return bool(addrs) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addrs)


class Guard:
    """ASGI middleware enforcing the rules in the module docstring around ``app``."""

    def __init__(self, app: Callable, *, token: str | None, bind_host: str, csrf_token: str | None = None) -> None:
        self.app = app
        self.token = token
        self.csrf_token = csrf_token or secrets.token_urlsafe(32)
        self.check_host = is_loopback(bind_host)
        self.allowed_hosts = {h.lower() for h in (*_LOOPBACK_NAMES, bind_host.strip("[]"))}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        if self.check_host and _hostname(headers.get("host", "")) not in self.allowed_hosts:
            await _deny(send, 403, "host", f"unexpected Host header {headers.get('host', '')!r}: open the dashboard at its loopback address")
            return
        if self.token is not None:
            query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
            if "token" in query and scope["method"] in ("GET", "HEAD"):
                await self._token_login(scope, send, query)
                return
            if not self._token_ok(headers):
                await _deny(send, 401, "token", "a token is required: open the link `trainjob dashboard` printed (…/?token=…) or send 'Authorization: Bearer <token>'")
                return
        if scope["method"] not in _SAFE_METHODS:
            problem = self._cross_site_problem(scope, headers)
            if problem:
                await _deny(send, 403, "csrf", problem)
                return
        await self.app(scope, receive, _with_security_headers(send, scope["path"]))

    # ---- token ---------------------------------------------------------------------------
    def _token_ok(self, headers: dict[str, str]) -> bool:
        candidates = []
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            candidates.append(auth[7:].strip())
        if TOKEN_HEADER in headers:
            candidates.append(headers[TOKEN_HEADER])
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:  # noqa: BLE001 - a malformed cookie header is just "no cookie"
            pass
        if TOKEN_COOKIE in cookie:
            candidates.append(cookie[TOKEN_COOKIE].value)
        return any(self._equal(c) for c in candidates)

    def _equal(self, given: str) -> bool:
        if self.token is None:
            return False
        return hmac.compare_digest(given.encode(), self.token.encode())

    async def _token_login(self, scope: Scope, send: Send, query: dict[str, str]) -> None:
        if not self._equal(query["token"]):
            await _deny(send, 401, "token", "wrong token")
            return
        rest = {k: v for k, v in query.items() if k != "token"}
        location = scope["path"] + ("?" + urlencode(rest) if rest else "")
        cookie = f"{TOKEN_COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Lax"
        await send({"type": "http.response.start", "status": 303, "headers": [(b"location", location.encode()), (b"set-cookie", cookie.encode()), (b"cache-control", b"no-store")]})
        await send({"type": "http.response.body", "body": b""})

    # ---- cross-site ------------------------------------------------------------------------
    def _cross_site_problem(self, scope: Scope, headers: dict[str, str]) -> str | None:
        origin = headers.get("origin")
        if origin is not None:
            own = f"{scope.get('scheme', 'http')}://{headers.get('host', '')}"
            if origin.lower() != own.lower():
                return f"cross-site request refused (Origin {origin!r} is not {own!r})"
        site = headers.get("sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            return f"cross-site request refused (Sec-Fetch-Site: {site})"
        given = headers.get(CSRF_HEADER)
        if not given or not hmac.compare_digest(given.encode(), self.csrf_token.encode()):
            return f"missing or wrong {CSRF_HEADER} header: actions must come from the dashboard page (its token is at GET /api/session)"
        return None


def _headers(scope: Scope) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in scope.get("headers", []):
        name = k.decode("latin-1").lower()
        value = v.decode("latin-1")
        out[name] = out[name] + "; " + value if name == "cookie" and name in out else value
    return out


def _hostname(host_header: str) -> str:
    h = host_header.strip().lower()
    if h.startswith("["):  # [::1]:8686
        return h[1 : h.find("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


async def _deny(send: Send, status: int, reason: str, message: str) -> None:
    body = json.dumps({"error": message, "reason": reason}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"cache-control", b"no-store")]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="trainjob"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def _with_security_headers(send: Send, path: str) -> Send:
    async def wrapped(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            headers += [
                (b"content-security-policy", _CSP.encode()),
                (b"x-content-type-options", b"nosniff"),
                (b"referrer-policy", b"no-referrer"),
                (b"x-frame-options", b"DENY"),
            ]
            if path.startswith("/api/"):
                headers.append((b"cache-control", b"no-store"))
            message = {**message, "headers": headers}
        await send(message)

    return wrapped
