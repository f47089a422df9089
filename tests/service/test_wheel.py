"""A built wheel, installed non-editable in a fresh venv, serves the bundled policy (issue 10 item 5,
the service side): the artifacts under ``agent/artifacts/`` are package data found through
``importlib.resources``, not a path into a source tree.

No network and no pre-training: the wheel is built from a temporary copy of the package sources
the Dockerfile copies (the working tree is untouched) with ``pip wheel --no-deps --no-build-isolation`` (the project
venv's setuptools). When the copy ships no artifact yet, a small ONNX network stands in for the
trained agent. The fresh venv has no pip and no system site-packages; the wheel is installed into
it with ``--no-deps`` by the project's pip (``pip --python``) *before* the venv can see anything
else, then a ``.pth`` file lends it the project venv's site-packages for the dependencies (numpy,
FastAPI, onnxruntime ...), which cannot be downloaded here. A plain path in a ``.pth`` does not run
the ``.pth`` files of the folder it names, so the project's editable finder stays inactive and
``import mixagent`` resolves to the installed wheel (asserted)."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mixagent.trajectories import DomainSpace
from tests.service.artifacts import write_onnx_policy
from tests.service.conftest import TOKEN, auth, free_port, run_body

REPO = Path(__file__).resolve().parents[2]


def _dockerfile_sources() -> tuple[str, ...]:
    """What the Dockerfile copies into its build (``COPY src... ./dest``): the wheel is built from the
    same files, so a package folder the image forgets fails here, in the default tier."""
    sources: list[str] = []
    for line in (REPO / "Dockerfile").read_text().splitlines():
        parts = line.split()
        if parts[:1] == ["COPY"] and not any(p.startswith("--") for p in parts[1:]):
            sources += parts[1:-1]
    return tuple(sources)


SOURCES = _dockerfile_sources()
SPACE = DomainSpace.from_fields({"source": ["web", "code"], "target": ["proofs"]}, {"web": 3.0})


def _sources(dest: Path) -> None:
    """Copy what git tracks or would track (not ignored) of the package sources into ``dest``."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *SOURCES],
                            cwd=REPO, check=True, capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


class Installed:
    def __init__(self, venv: Path, bundled: str):
        self.venv, self.bundled = venv, bundled
        self.python = venv / "bin" / "python"

    def run(self, code: str) -> str:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        return subprocess.run([str(self.python), "-c", code], env=env, cwd=self.venv, check=True,
                              capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Iterator[Installed]:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    _sources(src)
    artifacts = src / "agent" / "artifacts"
    shipped = sorted(p.parent.name for p in artifacts.glob("*/card.json"))
    if shipped:  # the trained agent ships: the test serves it
        bundled = json.loads((artifacts / shipped[0] / "card.json").read_text())["name"]
    else:  # a stand-in until it does
        write_onnx_policy(artifacts / "standin", SPACE, name="standin", version="v0")
        bundled = "standin"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp / "dist"),
                    str(src)], check=True, capture_output=True)
    (wheel,) = (tmp / "dist").glob("mixagent-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run([*pip, "--python", str(venv / "bin" / "python"), "install", "--no-deps", "--no-index",
                    str(wheel)], check=True, capture_output=True)
    purelib = Path(subprocess.run([str(venv / "bin" / "python"), "-c",
                                   "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                  check=True, capture_output=True, text=True).stdout.strip())
    (purelib / "_mixagent_test_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    yield Installed(venv, bundled)


def test_the_dockerfile_copies_every_package_folder():
    import tomllib

    folders = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values())
    assert {f.split("/")[0] for f in folders} <= set(SOURCES), SOURCES


def test_the_wheel_is_installed_not_the_source_tree(installed):
    where = installed.run("import mixagent.agent, mixagent.service.server.registry as r; "
                          "print(mixagent.agent.__file__); print(r.bundled_dir())").splitlines()
    assert all(Path(p).is_relative_to(installed.venv) for p in where), where
    assert not any(str(REPO) in p for p in where)


def test_the_installed_service_serves_the_bundled_policy(installed, tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIXAGENT_") and k != "PYTHONPATH"}
    env.update(MIXAGENT_TOKENS=TOKEN, MIXAGENT_PORT=str(port), MIXAGENT_LOG_LEVEL="warning",
               MIXAGENT_DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite'}")
    log = tmp_path / "serve.log"
    proc = subprocess.Popen([str(installed.venv / "bin" / "mixagent"), "serve"], cwd=tmp_path, env=env,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            deadline = time.time() + 90
            while True:
                assert proc.poll() is None, log.read_text()
                try:
                    ready = http.get("/readyz")
                    break
                except httpx.TransportError:
                    assert time.time() < deadline, log.read_text()
                    time.sleep(0.2)
            assert ready.status_code == 200 and ready.json()["default_policy"] == installed.bundled, ready.text
            policies = {p["name"]: p for p in http.get("/v1/policies", headers=auth()).json()["data"]}
            bundled = policies[installed.bundled]
            assert bundled["bundled"] and bundled["default"] and bundled["kind"] == "onnx"
            run = http.post("/v1/runs", json=run_body(), headers=auth()).json()
            assert run["policy"] == installed.bundled
            assert run["served_by"]["policy"] == f"{installed.bundled}@{bundled['version']}"
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_the_installed_package_carries_its_migrations_and_upgrades_an_earlier_database(installed, tmp_path):
    """The Alembic scripts are package data of ``mixagent.service.server``: ``mixagent db upgrade`` from
    the wheel brings a database of the first release (5c21ac1's tables) to this release's schema."""
    import sqlalchemy as sa

    from mixagent.service.server.db import head_revision, schema_revision
    from tests.service.server.test_migrations import old_schema

    where = installed.run("from mixagent.service.server.db import migrations_dir, head_revision; "
                          "print(migrations_dir()); print(head_revision())").splitlines()
    assert Path(where[0]).is_relative_to(installed.venv) and where[1] == head_revision(), where
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        old_schema("5c21ac1").create_all(conn)
    r = subprocess.run([str(installed.venv / "bin" / "mixagent"), "db", "upgrade", "--database-url", url],
                       cwd=tmp_path, env=_clean_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and f"upgraded to {head_revision()}" in r.stdout, r
    assert schema_revision(engine) == head_revision()
    engine.dispose()


def test_the_installed_package_carries_the_settings(installed):
    """The YAML settings are package data of ``mixagent.configs`` (the repository's ``configs/``), and
    the env finds them there (``--setting math-tiny`` from a wheel)."""
    out = installed.run(
        "import importlib.resources as r, json; from mixagent.env.setting import CONFIGS_DIR, DEFAULT_SETTING; "
        "print(json.dumps([str(CONFIGS_DIR), str(DEFAULT_SETTING), DEFAULT_SETTING.is_file(), "
        "sorted(p.name for p in r.files('mixagent.configs').iterdir() if p.name.endswith('.yaml'))]))")
    configs_dir, default, exists, names = json.loads(out.splitlines()[-1])
    assert Path(configs_dir).is_relative_to(installed.venv) and exists, (configs_dir, default)
    assert names == sorted(p.name for p in (REPO / "configs").glob("*.yaml"))


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell with only the installed wheel on it."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MIXAGENT_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, **extra}


def test_the_installed_env_runs_a_rollout_on_the_tiny_setting(installed, tiny_setting_file, tmp_path):
    """``mixagent env rollout`` from the wheel (issue 10 item 5, the env side): on the tests' tiny
    synthetic setting, with a fresh cache, the installed package builds the corpus, tokenizer and base
    model (seconds) and runs one episode, without network, and writes its history."""
    where = installed.run("import mixagent.env.mixing_env as m, mixagent.agent.runner as r; "
                          "print(m.__file__); print(r.__file__)").splitlines()
    assert all(Path(p).is_relative_to(installed.venv) for p in where), where
    cache, out = tmp_path / "cache", tmp_path / "runs" / "h.json"
    r = subprocess.run([str(installed.venv / "bin" / "mixagent"), "env", "rollout", "--setting", str(tiny_setting_file),
                        "--target-share", "0.5", "--out", str(out)], cwd=tmp_path,
                       env=_clean_env(MIXAGENT_HOME=str(cache)), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    from mixagent.trajectories import History

    h = History.model_validate_json(out.read_text())
    assert h.stages == 5 and len(h.feedback) == 6
    assert {p.name for p in cache.iterdir()} >= {"data", "base"}  # built here, by the installed package


def test_the_installed_package_resolves_setting_names_to_its_own_configs(installed, tmp_path):
    """``--setting math-tiny`` from the wheel is the packaged ``mixagent.configs/math-tiny.yaml``
    (the very setting of the committed dataset), and a misspelt name lists the packaged ones."""
    from mixagent.env.setting import load_setting

    out = installed.run(
        "import json, importlib.resources as r; from mixagent.env.setting import CONFIGS_DIR, load_setting; "
        "s = load_setting('math-tiny'); "
        "print(json.dumps([s.name, s.hash(), str(r.files('mixagent.configs') / 'math-tiny.yaml'), "
        "str(CONFIGS_DIR)]))")
    name, setting_hash, packaged, configs_dir = json.loads(out.splitlines()[-1])
    assert Path(packaged).is_relative_to(installed.venv) and Path(packaged).parent == Path(configs_dir)
    assert (name, setting_hash) == ("math-tiny", load_setting("math-tiny").hash())
    mixagent = str(installed.venv / "bin" / "mixagent")
    env = _clean_env(MIXAGENT_HOME=str(tmp_path / "cache"))
    r = subprocess.run([mixagent, "corpus", "show", "--setting", "math-tiny"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "not built yet: run `mixagent corpus build --setting math-tiny`" in r.stderr, r
    r = subprocess.run([mixagent, "corpus", "show", "--setting", "math-tine"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    known = ", ".join(sorted(p.stem for p in (REPO / "configs").glob("*.yaml")))
    assert r.returncode == 2 and f"(known: {known})" in r.stderr, r
