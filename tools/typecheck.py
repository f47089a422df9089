"""Run mypy on the installed layout of mixagent (``mixagent.trajectories`` is ``trajectories/`` ...).

mypy cannot follow setuptools' editable-install finder or the ``package-dir`` mapping of
``pyproject.toml``, so this builds the package tree mypy expects from symlinks in a temporary
folder and checks the named packages there (the configuration is ``[tool.mypy]`` of pyproject.toml):

    python tools/typecheck.py                    # what CI checks: the whole package, strict
    python tools/typecheck.py mixagent.agent     # any other package
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ["mixagent"]


def build_tree(dest: Path) -> None:
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for package, folder in sorted(mapping.items()):  # parents first: "mixagent" < "mixagent.env" < ...
        target = dest.joinpath(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for path in (ROOT / folder).iterdir():
            if path.suffix in (".py", ".pyi") or path.name == "py.typed":
                (target / path.name).symlink_to(path)


def main(argv: list[str]) -> int:
    packages = argv or DEFAULT
    with tempfile.TemporaryDirectory(prefix="mixagent-mypy-") as tmp:
        build_tree(Path(tmp))
        cmd = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml")]
        for p in packages:
            cmd += ["-p", p] if not p.endswith(".py") else [p]
        return subprocess.call(cmd, cwd=tmp)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
