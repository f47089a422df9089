"""Exact resume of a real training process: a plain training loop on each mixagent loader, reporting
to a real mixing service (loopback) whose policy changes the weights at every decision, is killed
with SIGKILL mid-interval after a checkpoint and started again; the resumed run trains on exactly
the sample ids the uninterrupted run trained on, through several later weight changes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from mixagent.service.trainer import MixingClient
from tests.service.conftest import TOKEN

SCRIPT = Path(__file__).with_name("resumable_training.py")
ROOT = Path(__file__).resolve().parents[3]


def _train(args: list[str], pause: bool = False) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE if not pause else subprocess.DEVNULL)


def _log(path: Path) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("loader", ["sampler", "datasets", "litdata"])
def test_a_killed_and_resumed_training_trains_on_exactly_the_uninterrupted_runs_samples(server, tmp_path, loader):
    extra: list[str] = []
    if loader == "litdata":
        pytest.importorskip("litdata")
        from tests.service.trainer.test_litdata_mixture import write_domains

        write_domains(tmp_path / "litdata")
        extra = ["--litdata", str(tmp_path / "litdata")]
    elif loader == "datasets":
        pytest.importorskip("datasets")
    common = ["--loader", loader, "--url", server.url, "--token", TOKEN, *extra]

    straight = _train([*common, "--out", str(tmp_path / "a"), "--log", str(tmp_path / "a.jsonl")])
    _, err = straight.communicate(timeout=300)
    assert straight.returncode == 0, err

    killed = _train([*common, "--out", str(tmp_path / "b"), "--log", str(tmp_path / "b1.jsonl"), "--pause-at", "10"],
                    pause=True)
    assert killed.stdout is not None
    assert killed.stdout.readline().strip() == "paused at 10"  # step 10: after the checkpoint at 8, mid-interval
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(timeout=30) == -signal.SIGKILL
    resumed = _train([*common, "--out", str(tmp_path / "b"), "--log", str(tmp_path / "b2.jsonl")])
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err

    a, b1, b2 = _log(tmp_path / "a.jsonl"), _log(tmp_path / "b1.jsonl"), _log(tmp_path / "b2.jsonl")
    assert [r["step"] for r in a] == list(range(1, 25))
    assert [(r["step"], r["ids"]) for r in b1] == [(r["step"], r["ids"]) for r in a[:10]]
    assert [r["step"] for r in b2] == list(range(9, 25))  # from the checkpoint at step 8
    assert [r["ids"] for r in b2] == [r["ids"] for r in a[8:]]  # the same samples, in the same order
    assert len({i for r in a for i in r["ids"]}) > 40  # real draws over the domains
    assert len({r["run"] for r in a}) == 1 and {r["run"] for r in b1} == {r["run"] for r in b2} != {a[0]["run"]}
    with MixingClient(server.url, TOKEN) as client:
        runs = [client.get_run(a[0]["run"]), client.get_run(b2[0]["run"])]
    weights = [[h["weights"] for h in run["history"]] for run in runs]
    assert [h["step"] for h in runs[1]["history"]] == [0, 6, 12, 18, 24] and runs[1]["done"]
    assert weights[0] == weights[1]  # the resumed run got the same decisions (its feedbacks were the same)
    changes = {tuple(round(v, 6) for v in w.values()) for w in weights[1]}
    assert len(changes) == 5  # every decision changed the mixture, three of them after the resume
