"""The root command (``mixagent/cli.py``): what holds for every sub-command.

Run as a shell runs it (a fresh interpreter, output piped): typer's own panels are not cut at 80
columns, and a command that needs an extra which is not installed says so in one line.
"""

from __future__ import annotations

import importlib.util
import re

import pytest

from mixagent.console import PIPE_WIDTH, extra_of, missing_extra
from tests.conftest import run_mixagent

PIP_TRAIN = "pip install 'mixagent[train]'"


def test_usage_errors_and_help_are_not_cut_at_80_columns_when_piped():
    option = "--" + "a-very-long-option-name-" * 4
    r = run_mixagent("trajectories", "stats", "somewhere", option)
    assert r.returncode == 2
    assert any(f"No such option: {option}" in line for line in r.stderr.splitlines()), r.stderr
    assert max(len(line) for line in r.stderr.splitlines()) <= PIPE_WIDTH
    r = run_mixagent("trajectories", "generate", "--help")
    assert r.returncode == 0
    whole = "Refuse runs whose first evaluation differs from the folder's by more (nats, any domain)."
    assert any(whole in line for line in r.stdout.splitlines()), r.stdout


def test_a_terminal_width_the_user_sets_wins():
    r = run_mixagent("trajectories", "stats", "somewhere", "--" + "x" * 100, env={"TERMINAL_WIDTH": "60"})
    assert r.returncode == 2 and max(len(line) for line in r.stderr.splitlines()) <= 60, r.stderr


def _one_line(r) -> str:  # type: ignore[no-untyped-def]
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_corpus_build_without_the_train_extra_says_what_to_install(tiny_setting_file, tmp_path):
    # a fresh cache: the build gets as far as training the tokenizer, which the train extra provides
    r = run_mixagent("corpus", "build", "--setting", str(tiny_setting_file), "--cache-dir", str(tmp_path),
                     missing=["tokenizers"])
    line = _one_line(r)
    assert "tokenizers is not installed" in line and PIP_TRAIN in line


def test_rollout_without_the_train_extra_says_what_to_install(tiny_setting_file, tmp_path):
    r = run_mixagent("env", "rollout", "--setting", str(tiny_setting_file), "--cache-dir", str(tmp_path),
                     missing=["gymnasium"])
    line = _one_line(r)
    assert "gymnasium is not installed" in line and PIP_TRAIN in line


def test_a_missing_module_no_extra_provides_keeps_its_traceback():
    assert missing_extra(ModuleNotFoundError("No module named 'nosuch'", name="nosuch")) is None
    line = missing_extra(ModuleNotFoundError("No module named 'torch.nn'", name="torch.nn"))
    assert line is not None and "torch is not installed" in line and PIP_TRAIN in line


@pytest.mark.parametrize("extra", ["train", "service"])
def test_every_requirement_of_an_extra_maps_to_a_module_that_imports_here(extra):
    """The import names derived from the package metadata are real: each is installed in this venv
    (``.[all,dev]``), so a missing one on a user's install is recognised."""
    from importlib.metadata import requires

    lines = [r for r in requires("mixagent") or [] if re.search(rf"""extra\s*==\s*["']{extra}["']""", r)]
    assert lines
    for line in lines:
        dist = re.match(r"[A-Za-z0-9._-]+", line).group(0)  # type: ignore[union-attr]
        if "sys_platform" in line and importlib.util.find_spec(dist) is None:
            continue  # a platform-only requirement (uvloop) that this platform skips
        module = re.sub(r"[-.]", "_", dist.lower())
        assert extra_of(module) == extra, (dist, module)
        assert importlib.util.find_spec(module) is not None, (dist, module)
