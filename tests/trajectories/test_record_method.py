"""A trainer-side method's log rides in a record's end line (``RecordMeta.method``), outside the
checksum: it round-trips, its absence reads as empty, and a malformed one is refused by name."""

from __future__ import annotations

import gzip
import json
from dataclasses import replace

import pytest

from mixagent.trajectories.storage import RecordError, RecordMeta, read_record, write_record

from .conftest import make_trajectory

META = RecordMeta(wall_s=2.5, finished_at="2026-01-01T00:00:00+00:00", host="test", start_wall_s=0.1)
METHOD = {"name": "tandem", "decisions": [{"t": 0, "alpha": [0.5, 0.25, 0.25], "overhead_cpu_s": 0.12}],
          "overhead_cpu_s_per_decision": 0.12, "train_cpu_s_per_decision": 0.3}


def test_the_method_log_round_trips_and_leaves_the_checksum_alone(tmp_path):
    traj = make_trajectory()
    with_log = tmp_path / "a" / f"{traj.header.trajectory_id}.jsonl.gz"
    plain = tmp_path / "b" / f"{traj.header.trajectory_id}.jsonl.gz"
    sha = write_record(with_log, traj, replace(META, method=METHOD))
    assert write_record(plain, traj, META) == sha
    assert read_record(with_log).meta.method == METHOD
    assert read_record(plain).meta.method == {}
    lines = gzip.decompress(with_log.read_bytes()).decode().splitlines()
    end = json.loads(lines[-1])
    end["method"] = ["not", "an", "object"]
    with_log.write_bytes(gzip.compress(("\n".join([*lines[:-1], json.dumps(end)]) + "\n").encode()))
    with pytest.raises(RecordError, match="end line: method must be an object, got list"):
        read_record(with_log)
