"""Ray's token authentication (``RAY_AUTH_MODE=token``), client side.

A cluster started with token auth refuses the dashboard's HTTP endpoints without an
``Authorization: Bearer <token>`` header (401) and GCS connections without the token (Ray's
``AuthenticationError``). The client's token comes from ``RayBackendConfig(auth_token=...)``, else
``$RAY_AUTH_TOKEN`` (Ray's own variable), else Ray's own lookup when ``RAY_AUTH_MODE=token`` is set
here (``$RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``).

The GCS client reads the token from the process's environment (Ray's C++ loader), so a token given
to the config is set for the whole process: one process talks to clusters of one token (a second,
different token is refused with a clear error). The job's own processes need nothing: they run on
the cluster's nodes, which were started with the token.
"""

from __future__ import annotations

import os
import threading

from trainjob.errors import BackendError

TOKEN_ENV = "RAY_AUTH_TOKEN"
MODE_ENV = "RAY_AUTH_MODE"
_LOCK = threading.Lock()


def token_of(configured: str | None) -> str | None:
    """The token this client uses: the config's, else ``$RAY_AUTH_TOKEN``; None: Ray's own lookup (or no auth)."""
    return configured or os.environ.get(TOKEN_ENV) or None


def use_token(token: str | None) -> None:
    """Make this process's GCS connections carry ``token`` (Ray reads it from the environment).

    Idempotent; refuses a second, different token (Ray's loader keeps the first for the process).
    """
    if not token:
        return
    with _LOCK:
        if os.environ.get(MODE_ENV) == "token" and os.environ.get(TOKEN_ENV) == token:
            return
        if os.environ.get(MODE_ENV) == "token" and os.environ.get(TOKEN_ENV) not in (None, token):
            raise BackendError(
                f"this process already uses another Ray auth token (${TOKEN_ENV}); Ray keeps one token per process: "
                "use one TrainerClient process per token-authenticated cluster"
            )
        os.environ[MODE_ENV] = "token"
        os.environ[TOKEN_ENV] = token
        from ray._raylet import Config

        Config.initialize("")  # Ray caches its config: refresh it so this process sees token mode


def http_headers(token: str | None) -> dict[str, str]:
    """The dashboard's ``Authorization`` header: the given token, else Ray's own (with ``RAY_AUTH_MODE=token``), else none."""
    if token:
        return {"Authorization": f"Bearer {token}"}
    try:
        from ray._private.authentication.http_token_authentication import get_auth_headers_if_auth_enabled
    except ImportError:  # a Ray without token authentication
        return {}
    return dict(get_auth_headers_if_auth_enabled({}))


def refused_message(address: str, had_token: bool, detail: str = "") -> str:
    """What to tell a user whose client the cluster refused (HTTP 401/403, Ray's AuthenticationError)."""
    if had_token:
        what = "refused this client's token (a wrong or old one)"
    else:
        what = "uses token authentication (RAY_AUTH_MODE=token) and this client has no token"
    return (
        f"the Ray cluster at {address} {what}: give its token as RayBackendConfig(auth_token=...) or in ${TOKEN_ENV} "
        f"(`ray get-auth-token` on a node prints it)" + (f" [{detail.strip()[:300]}]" if detail.strip() else "")
    )


def is_auth_failure(e: BaseException) -> bool:
    """Whether ``e`` is Ray refusing the client's credentials (not an unreachable cluster)."""
    try:
        from ray.exceptions import AuthenticationError
    except ImportError:
        return False
    return isinstance(e, AuthenticationError) or "InvalidAuthToken" in str(e)
