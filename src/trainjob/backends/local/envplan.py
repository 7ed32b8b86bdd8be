"""What a job's package environment will be, before anything is built: ``EnvPlan`` (pure).

``plan_for`` turns a job's ``packages_to_install`` and ``pip_index_urls`` into an ``EnvPlan``:
the checked requirements, the indexes and find-links (pip's own settings, read the way ``pip``
reads them, when the job gives none) and the base environment it is layered on. The plan's
``key`` names the cached environment; ``envs`` builds it. Nothing here installs or writes.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import site
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from trainjob.errors import BackendError
from trainjob.masking import mask_url, secret_values


class PackageInstallError(BackendError):
    """Installing a job's ``packages_to_install`` failed; the message carries the installer's own words."""


@dataclass(frozen=True)
class PipSettings:
    """The index and find-links settings pip would use here (its config files and ``PIP_*`` variables)."""

    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()


@dataclass(frozen=True)
class BaseEnv:
    """The environment a layer is built on: this interpreter and the packages it sees."""

    python: str
    version: str
    site_dirs: tuple[str, ...]
    dists: tuple[str, ...]  # the .dist-info folder names found, in sys.path order

    @classmethod
    def current(cls) -> "BaseEnv":
        dirs = _base_site_dirs()
        dists = []
        for d in dirs:
            try:
                dists.extend(sorted(e for e in os.listdir(d) if e.endswith(".dist-info")))
            except OSError:
                continue
        return cls(python=sys.executable, version=sys.version, site_dirs=tuple(dirs), dists=tuple(dists))

    def identity(self) -> dict[str, Any]:
        return {"python": os.path.realpath(self.python), "version": self.version, "site_dirs": list(self.site_dirs), "dists": list(self.dists)}


@dataclass(frozen=True)
class EnvPlan:
    """What to install, from where, on which base: everything the cache key depends on. Pure data."""

    requirements: tuple[str, ...]
    index_url: str | None
    extra_index_urls: tuple[str, ...]
    find_links: tuple[str, ...]
    base: BaseEnv

    @property
    def key(self) -> str:
        data = {
            "requirements": sorted(self.requirements),
            "index_url": self.index_url,
            "extra_index_urls": list(self.extra_index_urls),
            "find_links": list(self.find_links),
            "base": self.base.identity(),
        }
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:20]

    def index_options(self) -> tuple[list[str], dict[str, str]]:
        """``(argv, env)`` that give uv this plan's indexes and find-links.

        Indexes go in the environment (``UV_DEFAULT_INDEX``, then the extra ones space-separated
        in ``UV_INDEX``, which uv ranks before the default as it does ``--extra-index-url``), so
        their credentials never appear in a command line. Find-links stay on the command line
        (a comma in a folder name would break ``UV_FIND_LINKS``) unless one carries credentials.
        """
        env: dict[str, str] = {}
        if self.index_url:
            env["UV_DEFAULT_INDEX"] = self.index_url
        if self.extra_index_urls:
            env["UV_INDEX"] = " ".join(self.extra_index_urls)
        args: list[str] = []
        private = [loc for loc in self.find_links if mask_url(loc) != loc]
        for loc in self.find_links:
            if loc not in private:
                args += ["--find-links", loc]
        if private:
            env["UV_FIND_LINKS"] = ",".join(private)
        return args, env

    def describe(self) -> dict[str, Any]:
        """What the environment holds, as it may be shown: URL credentials masked."""
        return {
            "requirements": [mask_url(r) for r in self.requirements],
            "index_url": mask_url(self.index_url) if self.index_url else None,
            "extra_index_urls": [mask_url(u) for u in self.extra_index_urls],
            "find_links": [mask_url(loc) for loc in self.find_links],
        }

    def secrets(self) -> list[str]:
        """The credentials in this plan's URLs, to mask them in the installer's output."""
        return secret_values({"pip_index_urls": [self.index_url or "", *self.extra_index_urls, *self.find_links], "packages_to_install": list(self.requirements)})


def plan_for(
    packages: Iterable[str],
    index_urls: Iterable[str] | None,
    pip: PipSettings | None = None,
    base: BaseEnv | None = None,
) -> EnvPlan:
    """The environment a job needs. Raises PackageInstallError for a requirement that is not one.

    ``index_urls`` (the job's ``pip_index_urls``) replace pip's configured indexes when given:
    the first is the index, the rest extra indexes. Find-links locations always come from pip's
    settings, keeping only local folders that exist.
    """
    reqs = tuple(_check_requirement(i, r) for i, r in enumerate(packages))
    pip = pip if pip is not None else pip_settings()
    urls = [u for u in (index_urls or []) if u]
    if urls:
        index_url, extra = urls[0], tuple(urls[1:])
    else:
        index_url, extra = pip.index_url, pip.extra_index_urls
    find_links = tuple(loc for loc in pip.find_links if _location_exists(loc))
    return EnvPlan(reqs, index_url, extra, find_links, base or BaseEnv.current())


def _check_requirement(i: int, req: object) -> str:
    """The requirement, stripped; the same rule as ``TransformersTrainer`` (checked again here:
    a spec file could have been edited since)."""
    from trainjob.trainers import REQUIREMENT_EXPECTED, requirement_problem

    where = f"packages_to_install[{i}]={mask_url(req) if isinstance(req, str) else req!r}"
    if not isinstance(req, str) or not req.strip():
        raise PackageInstallError(f"{where}: {REQUIREMENT_EXPECTED}")
    why = requirement_problem(req.strip())
    if why:
        raise PackageInstallError(f"{where}: {REQUIREMENT_EXPECTED}; {why} (give indexes in pip_index_urls)")
    return req.strip()


def _location_exists(loc: str) -> bool:
    if "://" not in loc:
        return os.path.exists(loc)
    if loc.startswith("file://"):
        return os.path.exists(loc[len("file://") :])
    return True  # a remote find-links page: uv decides


def pip_settings(environ: Mapping[str, str] | None = None) -> PipSettings:
    """Read pip's configuration the way ``pip install`` would: config files, then ``PIP_*`` variables.

    Files, later ones overriding earlier ones: the global ones (``/etc/xdg/pip/pip.conf``,
    ``/etc/pip.conf``), the user's (``~/.pip/pip.conf``, ``~/.config/pip/pip.conf``), the
    environment's (``sys.prefix/pip.conf``), then ``PIP_CONFIG_FILE``; within a file ``[install]``
    overrides ``[global]``. ``PIP_CONFIG_FILE=/dev/null`` turns the files off, as in pip.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, str] = {}
    for path in _pip_config_files(environ):
        cp = configparser.RawConfigParser()
        try:
            cp.read(path)
        except (configparser.Error, OSError, UnicodeDecodeError):
            continue
        for section in ("global", "install"):
            if cp.has_section(section):
                for k, v in cp.items(section):
                    values[k.replace("_", "-")] = v
    for name in ("index-url", "extra-index-url", "find-links"):
        env_value = environ.get("PIP_" + name.upper().replace("-", "_"))
        if env_value is not None:
            values[name] = env_value
    index_url = values.get("index-url", "").strip() or None
    return PipSettings(index_url, tuple(values.get("extra-index-url", "").split()), tuple(values.get("find-links", "").split()))


def _pip_config_files(environ: Mapping[str, str]) -> list[str]:
    explicit = environ.get("PIP_CONFIG_FILE")
    if explicit == os.devnull:
        return []
    xdg_dirs = (environ.get("XDG_CONFIG_DIRS") or "/etc/xdg").split(os.pathsep)
    home = Path(environ.get("HOME") or Path.home())
    xdg_home = Path(environ.get("XDG_CONFIG_HOME") or home / ".config")
    files = [os.path.join(d, "pip", "pip.conf") for d in reversed(xdg_dirs) if d]
    files += ["/etc/pip.conf", str(home / ".pip" / "pip.conf"), str(xdg_home / "pip" / "pip.conf"), os.path.join(sys.prefix, "pip.conf")]
    if explicit:
        files.append(explicit)
    return [f for f in files if os.path.isfile(f)]


def _base_site_dirs() -> list[str]:
    dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        user = site.getusersitepackages()
        if os.path.isdir(user):
            dirs.append(user)
    seen: list[str] = []
    for d in dirs:
        if os.path.isdir(d) and d not in seen:
            seen.append(d)
    return seen
