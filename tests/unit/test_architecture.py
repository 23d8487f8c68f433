"""The layout keeps its promises (docs/architecture.md): the import directions between core's
packages, no import cycles, no private name imported across modules, core free of the
harness's heavy dependencies, and no overlong module without a reason at its top.

The imports are read from the source (every `import` and `from ... import`, at module level or
inside functions), so a forbidden edge fails here even if nothing runs it yet."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("core", "chaos", "loadtests", "predictor", "reports")

# What each part of core may import from core (besides itself). Lower layers never import
# higher ones; `jobs`, `contract` and `errors` import nothing of core but each other's basics.
CORE_ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "contract": {"errors"},
    "jobs": {"errors", "contract"},
    "settings": {"errors", "jobs"},
    "infra": {"errors", "settings"},
    "store": {"errors", "contract", "jobs", "settings"},
    "dispatch": {"errors", "contract", "jobs", "settings"},
    "memory": {"errors", "contract", "jobs", "settings", "dispatch", "infra"},
    "service": {"errors", "contract", "jobs", "settings", "infra", "store", "dispatch",
                "memory"},
    "worker": {"errors", "contract", "jobs", "settings", "infra", "store", "dispatch",
               "memory", "service"},
    "supervisor": {"errors", "contract", "jobs", "settings", "infra", "store", "dispatch",
                   "memory", "service", "worker"},
    "api": {"errors", "contract", "jobs", "settings", "infra", "store", "dispatch", "memory",
            "service"},
    "cli": {"errors", "contract", "jobs", "settings", "infra", "store", "dispatch", "memory",
            "service", "worker", "supervisor", "api"},
}
# The harness's parts (DESIGN.md's layout table): what each may import of ours.
HARNESS_ALLOWED: dict[str, set[str]] = {
    "chaos": {"core"},
    "predictor": {"core"},
    "reports": {"core"},
    "loadtests": {"core", "chaos", "reports", "predictor"},
}
# Never in core: a worker process stays small and starts fast.
HEAVY = {"locust", "pandas", "matplotlib", "sklearn", "skops", "numpy", "qdrant_client",
         "chaos", "loadtests", "predictor", "reports"}
# The one module of core that may import one of them: its adapter (imported only by the memory
# owner, never by a worker).
ADAPTERS = {"qdrant_client": "core.memory.qdrant"}
MAX_LINES = 400
REASON = "Length:"  # a module over MAX_LINES says why at its top, in a line starting so


def modules() -> Iterator[tuple[str, Path]]:
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            yield ".".join(parts), path


def imports(path: Path, name: str) -> Iterator[tuple[str, list[str], bool]]:
    """(module imported, names taken from it, at module level?) for each import."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], id(node) in top
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_pkg else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            yield base, [a.name for a in node.names], id(node) in top


ALL = dict(modules())


def resolve(target: str, names: list[str]) -> list[str]:
    """The modules of ours an import reaches (`from core.cli import ops` reaches core.cli.ops)."""
    out = []
    if target in ALL:
        out.append(target)
    for n in names:
        if f"{target}.{n}" in ALL:
            out.append(f"{target}.{n}")
    return out


def core_part(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "core"


def edges() -> list[tuple[str, str, list[str], bool]]:
    out = []
    for name, path in ALL.items():
        for target, names, top in imports(path, name):
            out.append((name, target, names, top))
    return out


EDGES = edges()


def test_core_imports_follow_the_layers() -> None:
    bad = []
    for src, target, names, _ in EDGES:
        if not src.startswith("core.") or not target.startswith("core"):
            continue
        for dst in resolve(target, names) or [target]:
            s, d = core_part(src), core_part(dst)
            if d in ("core", s):
                continue
            if d not in CORE_ALLOWED.get(s, set()):
                bad.append(f"{src} -> {dst} ({s} may import {sorted(CORE_ALLOWED.get(s, ()))})")
    assert bad == []


def test_harness_parts_import_only_what_the_layout_allows() -> None:
    bad = []
    for src, target, _, _ in EDGES:
        s, d = src.split(".")[0], target.split(".")[0]
        if s == "core" or d not in PACKAGES or d == s:
            continue
        if d not in HARNESS_ALLOWED[s]:
            bad.append(f"{src} -> {target}")
    assert bad == []


def test_core_stays_free_of_the_harness_and_heavy_libraries() -> None:
    bad = []
    for src, target, _, _ in EDGES:
        root = target.split(".")[0]
        if src.startswith("core") and root in HEAVY and ADAPTERS.get(root) != src:
            bad.append(f"{src} -> {target}")
    assert bad == []


def test_no_import_cycles() -> None:
    graph: dict[str, set[str]] = {name: set() for name in ALL}
    for src, target, names, _ in EDGES:
        for dst in resolve(target, names):
            if dst != src and not src.startswith(dst + "."):  # a package's own modules
                graph[src].add(dst)
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_no_private_name_is_imported_across_modules() -> None:
    bad = [f"{src} <- {target}.{n}" for src, target, names, _ in EDGES
           for n in names if n.startswith("_") and not n.startswith("__") and target != src]
    tests = [f"{p.relative_to(ROOT)} <- {t}.{n}" for p in (ROOT / "tests").rglob("*.py")
             for t, names, _ in imports(p, "tests") for n in names
             if n.startswith("_") and not n.startswith("__") and t.split(".")[0] in PACKAGES]
    assert bad + tests == []


def test_long_modules_say_why() -> None:
    long = [f"{p.relative_to(ROOT)} ({n} lines)" for _, p in ALL.items()
            if (n := len(p.read_text().splitlines())) > MAX_LINES
            and REASON not in "\n".join(p.read_text().splitlines()[:30])]
    assert long == []


@pytest.mark.parametrize("forbidden", [
    ("core.jobs.model", "core.store.queries"),
    ("core.contract.keys", "core.dispatch.index"),
    ("core.store.queries", "core.service.jobs"),
])
def test_the_checks_catch_a_planted_edge(forbidden: tuple[str, str]) -> None:
    """The layer rule really rejects an upward edge (so the test above can fail)."""
    src, dst = forbidden
    s, d = core_part(src), core_part(dst)
    assert d not in CORE_ALLOWED[s]
