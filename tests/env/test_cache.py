import multiprocessing as mp
import time
from pathlib import Path

import pytest

from mixagent.env.cache import atomic_dir, build_lock


def test_atomic_dir_publishes_only_finished_entries(tmp_path):
    final = tmp_path / "entry"
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            (tmp / "half").write_text("x")
            raise RuntimeError("crash mid-build")
    assert not final.exists() and list(tmp_path.iterdir()) == []
    with atomic_dir(final) as tmp:
        (tmp / "done").write_text("1")
    assert (final / "done").read_text() == "1"


def test_atomic_dir_loser_of_a_race_keeps_the_winners_entry(tmp_path):
    final = tmp_path / "entry"
    with atomic_dir(final) as tmp:
        (tmp / "mine").write_text("loser")
        final.mkdir()  # another process finished first
        (final / "theirs").write_text("winner")
    assert [p.name for p in final.iterdir()] == ["theirs"]
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]


def _build(final: str, log: str) -> None:
    final_p = Path(final)
    with build_lock(final_p):
        if not final_p.exists():
            with open(log, "a") as f:
                f.write("built\n")
            time.sleep(0.3)
            with atomic_dir(final_p) as tmp:
                (tmp / "x").write_text("1")


def test_build_lock_builds_once_across_processes(tmp_path):
    final, log = tmp_path / "entry", tmp_path / "log"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_build, args=(str(final), str(log))) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert log.read_text() == "built\n"
