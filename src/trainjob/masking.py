"""What counts as a secret in a job's spec, and how it is masked wherever it is stored or shown.

The one owner of the rules; everything that stores or shows a spec, an event, a log line written
by trainjob, an error message or a cached environment goes through here. A secret is:

- the value of an ``env`` entry whose *name* looks secret (``*TOKEN*``, ``*KEY*``, ``*SECRET*``,
  ``*PASSWORD*``, ``*PASSWD*``, ``*CREDENTIAL*``; ``TOKENIZERS_*`` is not one);
- a *value* that looks like a credential wherever it appears: a known token format (``hf_...``,
  ``sk-...``, ``ghp_...``, ``github_pat_...``, ``glpat-...``, ``xoxb-...``, ``AKIA...``,
  ``npm_...``, ``pypi-...``, a JWT) or, as a whole ``env`` value or script argument, a long
  base64 or hex string;
- the user information of a URL (``https://user:password@host`` keeps ``user``; a lone
  ``https://token@host`` hides the token), in ``pip_index_urls``, ``packages_to_install``, env
  values such as ``DATABASE_URL``, script arguments and free text;
- the value after a script argument named like a secret (``--hf_token xyz``,
  ``--api-key=xyz``, ``--password``...: ``--*token*``, ``--*key*``, ``--*secret*``,
  ``--*password*``, ``--*credential*``).

Masked values read ``******``. ``split_spec`` separates a job's spec into what may be stored and
shown (masked) and the real values the launcher needs; ``join_spec`` puts them back together in
the one process that launches the ranks. Pure functions; no I/O, no trainjob imports.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

MASK = "******"

_SECRET_NAME = re.compile(r"TOKEN(?!IZ)|KEY|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
_SECRET_FLAG = re.compile(r"^--?[\w.-]*(token(?!iz)|key|secret|passw(or)?d|credential)[\w.-]*$", re.IGNORECASE)
# Known token formats, found anywhere in a text.
_TOKENS = re.compile(
    r"(?<![A-Za-z0-9])(?:"
    r"hf_[A-Za-z0-9]{16,}"
    r"|sk-[A-Za-z0-9_-]{16,}"
    r"|gh[pousr]_[A-Za-z0-9]{16,}"
    r"|github_pat_[A-Za-z0-9_]{16,}"
    r"|glpat-[A-Za-z0-9_-]{16,}"
    r"|xox[abprs]-[A-Za-z0-9-]{10,}"
    r"|AKIA[0-9A-Z]{16}"
    r"|npm_[A-Za-z0-9]{30,}"
    r"|pypi-[A-Za-z0-9_-]{40,}"
    r"|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"
    r")"
)
_HEX = re.compile(r"^[0-9a-fA-F]{32,}$")
_BASE64 = re.compile(r"^[A-Za-z0-9+/_-]{32,}={0,2}$")
# scheme://[user][:password]@ -- the user information of a URL, in any text.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^\s:@/?#]*)(?::(?P<password>[^\s@/?#]*))?@")

# Spec fields that can hold secrets; the launcher needs their real values.
SECRET_FIELDS = ("env", "script_args", "pip_index_urls", "packages_to_install", "func_args")


def is_secret_name(name: str) -> bool:
    """True for a variable or key name that names a secret (``HF_TOKEN``, ``AWS_SECRET_ACCESS_KEY``)."""
    return bool(_SECRET_NAME.search(name))


def looks_like_token(value: str) -> bool:
    """True when a whole value looks like a credential: a known token format, or long base64/hex.

    Long base64 needs upper case, lower case and digits and must not start like a path, so module
    names, paths and ordinary words are not taken for secrets.
    """
    v = value.strip()
    if _TOKENS.fullmatch(v):
        return True
    if _HEX.match(v):
        return True
    if _BASE64.match(v) and not v.startswith(("/", "./", "~")):
        return any(c.isupper() for c in v) and any(c.islower() for c in v) and any(c.isdigit() for c in v)
    return False


def mask_text(text: str, known: Iterable[str] = ()) -> str:
    """``text`` with the ``known`` secret values, URL credentials and known token formats masked.

    For free text (log lines trainjob writes, error messages, reprs): the long base64/hex rule is
    not applied here, since hashes and addresses in tracebacks would be taken for secrets.
    """
    if not isinstance(text, str) or not text:
        return text
    for secret in sorted({k for k in known if isinstance(k, str) and len(k) >= 4}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    text = _USERINFO.sub(_mask_userinfo, text)
    return _TOKENS.sub(MASK, text)


def mask_url(url: str) -> str:
    """A URL with its password (or its lone user token) masked: ``https://user:******@host/simple``."""
    return _USERINFO.sub(_mask_userinfo, url) if isinstance(url, str) else url


def mask_value(value: str) -> str:
    """One value (an env value, a script argument): all ``******`` if it looks like a token, else
    with URL credentials and embedded tokens masked."""
    if not isinstance(value, str):
        return value
    if looks_like_token(value):
        return MASK
    return mask_text(value)


def mask_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` as it may be shown: secret names and token-looking values masked whole, URL credentials masked."""
    return {k: (MASK if is_secret_name(str(k)) else mask_value(v)) for k, v in env.items()}


def mask_args(args: Iterable[str]) -> list[str]:
    """Script arguments as they may be shown: the value after ``--*token*`` etc. (or after its ``=``),
    and any token-looking argument, masked. The script still receives the real ones."""
    out: list[str] = []
    hide_next = False
    for arg in args:
        if not isinstance(arg, str):
            out.append(arg)
            continue
        if hide_next and not arg.startswith("--"):
            out.append(MASK)
            hide_next = False
            continue
        hide_next = False
        flag, eq, _value = arg.partition("=")
        if arg.startswith("-") and _SECRET_FLAG.match(flag):
            if eq:
                out.append(f"{flag}={MASK}")
            else:
                out.append(arg)
                hide_next = True
            continue
        out.append(mask_value(arg))
    return out


def mask_field_value(field: str, value: Any) -> str:
    """The ``repr`` of ``value`` for a message about spec field ``field`` (``env['HF_TOKEN']``,
    ``script_args``, ``pip_index_urls[0]``...), masked. Used by every validation error."""
    if field.startswith(("env[", "func_args[")) and is_secret_name(field.split("[", 1)[1]):
        return MASK
    if field.startswith("script_args"):
        if isinstance(value, str):
            return repr(" ".join(mask_args(value.split())))
        if isinstance(value, (list, tuple)) and all(isinstance(a, str) for a in value):
            return repr(mask_args(value))
    return mask_text(repr(_mask_any(value)))


def _mask_any(value: Any) -> Any:
    """A copy of a container with secret-named keys and token-looking strings masked."""
    if isinstance(value, str):
        return mask_value(value)
    if isinstance(value, Mapping):
        return {k: (MASK if isinstance(k, str) and is_secret_name(k) else _mask_any(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_mask_any(v) for v in value)
    return value


def mask_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The spec as it may be stored and shown (see the module docstring)."""
    return split_spec(spec)[0]


def split_spec(spec: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(shown, hidden)``: ``shown`` is ``spec`` masked; ``hidden`` the real value of every field
    that masking changed (empty when nothing is secret). ``join_spec(shown, hidden)`` is ``spec``."""
    shown = dict(spec)
    if spec.get("env"):
        shown["env"] = mask_env(spec["env"])
    if spec.get("script_args"):
        shown["script_args"] = mask_args(spec["script_args"])
    for name in ("pip_index_urls", "packages_to_install"):
        if spec.get(name):
            shown[name] = [mask_url(u) for u in spec[name]]
    if spec.get("func_args"):  # reprs of the arguments (the real ones travel in the payload)
        shown["func_args"] = {k: (MASK if is_secret_name(str(k)) else mask_text(v) if isinstance(v, str) else v) for k, v in spec["func_args"].items()}
    hidden = {name: spec[name] for name in SECRET_FIELDS if name in spec and shown.get(name) != spec[name]}
    return shown, hidden


def join_spec(shown: Mapping[str, Any], hidden: Mapping[str, Any] | None) -> dict[str, Any]:
    """The real spec from its masked form and the hidden values (``split_spec``'s inverse)."""
    return {**shown, **(hidden or {})}


def secret_values(spec: Mapping[str, Any]) -> list[str]:
    """The real secret strings in a (real) spec, to mask them wherever they turn up in text that
    trainjob writes (an installer's output, an exception message): masked env values, URL
    passwords and lone URL tokens, masked script argument values."""
    found: list[str] = []
    for name, value in (spec.get("env") or {}).items():
        if not isinstance(value, str):
            continue
        if is_secret_name(str(name)) or looks_like_token(value):
            found.append(value)
        found.extend(_url_secrets(value))
    args = list(spec.get("script_args") or [])
    for real, shown in zip(args, mask_args(args)):
        if isinstance(real, str) and real != shown:
            if shown.endswith("=" + MASK):
                found.append(real.partition("=")[2])
            elif shown == MASK:
                found.append(real)
            found.extend(_url_secrets(real))
    for name in ("pip_index_urls", "packages_to_install"):
        for value in spec.get(name) or []:
            if isinstance(value, str):
                found.extend(_url_secrets(value))
    return [s for s in found if s]


def _url_secrets(text: str) -> list[str]:
    out = []
    for m in _USERINFO.finditer(text):
        if m.group("password"):
            out.append(m.group("password"))
        elif m.group("user") and not _keeps_user(m):
            out.append(m.group("user"))
    return out


def _keeps_user(m: re.Match) -> bool:
    """A lone user name is shown for ssh URLs (``ssh://git@host``: keys, not the name, are secret)."""
    return "ssh" in m.group("scheme").lower()


def _mask_userinfo(m: re.Match) -> str:
    scheme, user, password = m.group("scheme"), m.group("user"), m.group("password")
    if password is not None:
        return f"{scheme}{user}:{MASK}@"
    if user and not _keeps_user(m):
        return f"{scheme}{MASK}@"
    return m.group(0)
