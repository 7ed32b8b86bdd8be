"""The import rule of docs/architecture.md, checked on the source: which package may import which.

Every ``import``/``from ... import`` of a ``trainjob`` module is read with ``ast`` (imports inside
functions too: a lazy import is still a dependency). No module is imported or run.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "trainjob"

BACKENDS = ("backends", "backends.local", "backends.ray")
# What each part may NOT import. Parts: cli, dashboard, client, optimizer (the public API above the
# backends), backends (base, records), backends.local, backends.ray, core, runtime, store, and
# "shared" for the small modules everyone uses (types, errors, contract, checkpoints, masking...).
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "cli": (*BACKENDS, "store", "runtime"),  # over the client, never over a backend
    "dashboard": (*BACKENDS, "store", "runtime", "cli"),
    # The store is the local backend's (its JobState, core.state): nothing above or beside it reads it.
    "client": ("cli", "dashboard", "store"),
    "optimizer": ("cli", "dashboard", "store"),
    "backends": ("client", "optimizer", "cli", "dashboard", "store"),
    "backends.local": ("client", "optimizer", "cli", "dashboard", "backends.ray"),
    "backends.ray": ("client", "optimizer", "cli", "dashboard", "backends.local", "store"),
    "core": ("client", "optimizer", "cli", "dashboard", *BACKENDS, "runtime", "store"),  # decides; no I/O of its own
    "runtime": ("client", "optimizer", "cli", "dashboard", *BACKENDS, "store"),  # inside ranks only
    "store": ("client", "optimizer", "cli", "dashboard", *BACKENDS, "runtime", "core"),
    "shared": ("client", "optimizer", "cli", "dashboard", *BACKENDS, "runtime", "store"),
}

# What is left, each with why: (importing module or package, imported module or package).
# An entry that no import needs any more fails the test: remove it when the import is gone.
ALLOWED = {
    # `trainjob warm` starts and lists the local backend's warm processes; the client has no API
    # for them yet.
    ("trainjob.cli.warm", "trainjob.backends.local.warm"),
}


def part_of(module: str) -> str:
    parts = module.split(".")[1:]
    if not parts:
        return "api"  # trainjob/__init__.py: the public names, re-exported
    if parts[0] == "backends":
        return f"backends.{parts[1]}" if len(parts) > 1 and parts[1] in ("local", "ray", "kubernetes") else "backends"
    if parts[0] in ("cli", "dashboard", "client", "optimizer", "core", "runtime", "store"):
        return parts[0]
    return "shared"


def module_name(path: Path, src: Path = SRC) -> str:
    name = ".".join(path.relative_to(src).with_suffix("").parts)
    return name.removesuffix(".__init__")


def _is_module(name: str, src: Path) -> bool:
    rel = Path(*name.split("."))
    return (src / rel).with_suffix(".py").exists() or (src / rel / "__init__.py").exists()


def imports_of(path: Path, src: Path = SRC) -> list[tuple[int, str]]:
    """(line, module) of every trainjob module ``path`` imports; ``from trainjob.x import y`` counts
    as ``trainjob.x.y`` where ``y`` is a module, else as ``trainjob.x``."""
    found = []
    package = module_name(path, src) if path.name == "__init__.py" else module_name(path, src).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for a in node.names:
                full = f"{base}.{a.name}"
                found.append((node.lineno, full if _is_module(full, src) else base))
    return list(dict.fromkeys((line, m) for line, m in found if m == "trainjob" or m.startswith("trainjob.")))


def _allowed(importer: str, imported: str) -> tuple[str, str] | None:
    for src, dst in ALLOWED:
        if (importer == src or importer.startswith(src + ".")) and (imported == dst or imported.startswith(dst + ".")):
            return src, dst
    return None


def _scan(pkg: Path = PKG) -> tuple[list[str], set[tuple[str, str]], set[tuple[str, str]]]:
    """(imports against the rule, allow-list entries used, every (importer, imported) pair)."""
    src = pkg.parent
    wrong, used, edges = [], set(), set()
    for path in sorted(pkg.rglob("*.py")):
        importer = module_name(path, src)
        mine = part_of(importer)
        for line, imported in imports_of(path, src):
            edges.add((importer, imported))
            theirs = part_of(imported)
            if theirs == mine or theirs not in FORBIDDEN.get(mine, ()):
                continue
            entry = _allowed(importer, imported)
            if entry:
                used.add(entry)
            else:
                wrong.append(f"{path.relative_to(src)}:{line}: {mine} imports {imported} ({theirs})")
    return wrong, used, edges


def test_imports_point_one_way():
    wrong, used, edges = _scan()
    # The scan sees real imports (a broken parser would find nothing wrong, vacuously).
    assert ("trainjob.backends.local.supervisor", "trainjob.core.events") in edges
    assert ("trainjob.backends.ray.driver", "trainjob.core.resume") in edges
    users = {part_of(a) for a, b in edges if part_of(b) == "store" and part_of(a) != "store"}
    assert users == {"backends.local"}, f"only the local backend uses the store, not {users - {'backends.local'}}"
    assert not wrong, "imports against docs/architecture.md:\n" + "\n".join(wrong)
    assert not ALLOWED - used, f"allow-list entries no import needs any more (remove them): {sorted(ALLOWED - used)}"


def test_the_rule_catches_a_wrong_import(tmp_path):
    """The checker itself, on a small tree: the wrong-way imports are reported, the others are not."""
    pkg = tmp_path / "trainjob"
    files = {
        "__init__.py": "from trainjob.client import TrainerClient\n",
        "types.py": "",
        "client.py": "from trainjob.backends.local import backend\n",
        "core/__init__.py": "",
        "core/events.py": "from trainjob import types\nfrom . import outcome\n\ndef f():\n    from trainjob.backends.local.backend import new_job_id\n",
        "core/outcome.py": "",
        "backends/__init__.py": "",
        "backends/local/__init__.py": "",
        "backends/local/backend.py": "from trainjob.core import events\n",
        "backends/ray/__init__.py": "",
        "backends/ray/backend.py": "from ..local.backend import LocalBackend\n",
    }
    for name, text in files.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    wrong, _, edges = _scan(pkg)
    assert ("trainjob.core.events", "trainjob.core.outcome") in edges  # a relative import, resolved
    assert wrong == [
        "trainjob/backends/ray/backend.py:1: backends.ray imports trainjob.backends.local.backend (backends.local)",
        "trainjob/core/events.py:5: core imports trainjob.backends.local.backend (backends.local)",
    ]
