"""The distribution maps the design card's top-level folders into the `mixagent` namespace; a
sub-package missing from pyproject's explicit list would vanish from non-editable installs."""

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_every_package_folder_is_listed_in_pyproject():
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    for namespace, folder in cfg["package-dir"].items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder)
            name = ".".join([namespace, *rel.parts])
            assert name in listed, f"{init.parent} is a package but {name!r} is not in pyproject's packages"
    assert {"mixagent.env", "mixagent.trajectories", "mixagent.agent", "mixagent.service"} <= listed


def test_console_script_and_namespace():
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert cfg["project"]["scripts"]["mixagent"] == "mixagent.cli:app"
    import mixagent.env
    import mixagent.trajectories

    assert Path(mixagent.env.__file__).parent == REPO / "env"
    assert Path(mixagent.trajectories.__file__).parent == REPO / "trajectories"
