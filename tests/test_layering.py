"""The floors of the house: every import between the top-level folders points one way.

    trajectories (ground)  <-  env  <-  agent  <-  service  <-  mixagent.cli (root)

and the server room of ``service/`` stands on the ground and on ``agent``'s policy modules only (no
env, no torch). Every ``import`` statement of every module counts, including imports inside
functions: a lazy import is still an arrow. A second test imports the ground floor and the server in
a fresh interpreter and looks at what got loaded.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROOMS = {  # package prefix -> folder
    "mixagent.trajectories": ROOT / "trajectories",
    "mixagent.env": ROOT / "env",
    "mixagent.agent": ROOT / "agent",
    "mixagent.service": ROOT / "service",
    "mixagent": ROOT / "mixagent",
}
LEAVES = {"mixagent", "mixagent.console"}
"""The package itself (``__version__``) and the console helpers import nothing of mixagent."""
SERVER_MAY_USE = {"mixagent.agent", "mixagent.agent.card", "mixagent.agent.onnx_policy", "mixagent.agent.baselines",
                  "mixagent.agent.registry", "mixagent.agent.errors"}

ALLOWED: dict[str, tuple[str, ...]] = {
    "mixagent.trajectories": ("mixagent.trajectories",),
    "mixagent.env": ("mixagent.trajectories", "mixagent.env"),
    "mixagent.agent": ("mixagent.trajectories", "mixagent.env", "mixagent.agent"),
    "mixagent.service.server": ("mixagent.trajectories", "mixagent.service.server", *sorted(SERVER_MAY_USE)),
    "mixagent.service": ("mixagent.trajectories", "mixagent.env", "mixagent.agent", "mixagent.service"),
    "mixagent": ("mixagent",),
}
FORBIDDEN_THIRD_PARTY = {
    "mixagent.trajectories": ("torch", "transformers", "d3rlpy", "gymnasium", "fastapi", "sqlalchemy"),
    "mixagent.service.server": ("torch", "transformers", "d3rlpy", "gymnasium"),
    "mixagent.agent.card": ("torch", "d3rlpy", "gymnasium"),
    "mixagent.agent.errors": ("torch", "d3rlpy", "gymnasium"),
    "mixagent.agent.onnx_policy": ("torch", "d3rlpy", "gymnasium"),
    "mixagent.agent.baselines": ("torch", "d3rlpy", "gymnasium"),
}


def _modules() -> list[tuple[str, Path]]:
    out = []
    for prefix, folder in ROOMS.items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out.append((".".join([prefix, *parts]) if parts else prefix, path))
    return out


def _imports(path: Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".")[: -node.level] if not path.name == "__init__.py" else module.split(".")[
                    : len(module.split(".")) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            found.add(name)
            found |= {f"{name}.{a.name}" for a in node.names}  # `from mixagent import env` is an arrow too
    return found


def _room(module: str) -> str:
    if module.startswith("mixagent.service.server"):
        return "mixagent.service.server"
    for prefix in ("mixagent.trajectories", "mixagent.env", "mixagent.agent", "mixagent.service"):
        if module == prefix or module.startswith(prefix + "."):
            return prefix
    return "mixagent"


def _is_mixagent_module(name: str) -> bool:
    return name == "mixagent" or name.startswith("mixagent.")


def _known(name: str, modules: set[str]) -> bool:
    return name in modules


MODULES = _modules()
NAMES = {m for m, _ in MODULES}


@pytest.mark.parametrize(("module", "path"), MODULES, ids=[m for m, _ in MODULES])
def test_every_arrow_points_down(module, path):
    room = _room(module)
    if module in LEAVES:
        allowed: tuple[str, ...] = ()
    elif room == "mixagent":  # the root CLI stands on every floor
        return
    else:
        allowed = ALLOWED[room]
    bad = []
    for name in sorted(_imports(path, module)):
        if not _is_mixagent_module(name) or name in LEAVES or not _known(name, NAMES):
            continue  # third-party, a leaf, or `from pkg import name` of a non-module name
        if not any(name == a or name.startswith(a + ".") for a in allowed):
            bad.append(name)
    assert not bad, f"{module} ({room}) imports {bad}, which lie above it or in a room it must not use"


@pytest.mark.parametrize("module", sorted(FORBIDDEN_THIRD_PARTY))
def test_light_rooms_do_not_import_heavy_libraries(module):
    for name, path in MODULES:
        if name == module or name.startswith(module + "."):
            heavy = sorted(i for i in _imports(path, name) if i.split(".")[0] in FORBIDDEN_THIRD_PARTY[module])
            assert not heavy, f"{name} imports {heavy}"


def test_the_checker_sees_a_forbidden_arrow(tmp_path):
    """The scan is not vacuous: a lazy upward import inside a function is found."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from mixagent.env.setting import load_setting\n    return load_setting\n")
    assert "mixagent.env.setting" in _imports(bad, "mixagent.trajectories.bad")


def test_importing_the_ground_floor_loads_nothing_above_it():
    code = (
        "import sys, mixagent.trajectories, mixagent.trajectories.storage, mixagent.trajectories.stats, "
        "mixagent.trajectories.schedules, mixagent.trajectories.replay, mixagent.trajectories.cli\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'd3rlpy', 'gymnasium', 'fastapi') "
        "or m.startswith(('mixagent.env', 'mixagent.agent', 'mixagent.service')))\n"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
