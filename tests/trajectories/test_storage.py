import gzip
import json
from dataclasses import replace

import pytest

from mixagent.trajectories import storage
from mixagent.trajectories.storage import (
    FileStore,
    PartialRecord,
    RecordError,
    RecordMeta,
    read_record,
    record_lines,
    trajectory_checksum,
    write_record,
)

from .conftest import make_trajectory

META = RecordMeta(wall_s=2.5, finished_at="2026-01-01T00:00:00+00:00", host="test", start_wall_s=0.1)


def test_exported_members_are_pinned():
    assert set(storage.__all__) == {
        "RECORD_SUFFIX", "RecordError", "RecordMeta", "StoredTrajectory", "TrajectoryStore", "FileStore",
        "PartialRecord", "trajectory_checksum", "record_lines", "write_record", "read_record",
        "read_trajectory", "write_json_atomic", "read_json_object", "import_jsonl", "ImportReport", "unfinished",
        "FolderLock",
    }


def test_round_trip_is_exact_and_bytes_are_deterministic(tmp_path, trajectory):
    name = f"{trajectory.header.trajectory_id}.jsonl.gz"
    a, b = tmp_path / "a" / name, tmp_path / "b" / name
    sha = write_record(a, trajectory, META)
    write_record(b, trajectory, META)
    assert a.read_bytes() == b.read_bytes()
    back = read_record(a)
    assert back.trajectory == trajectory
    assert back.sha256 == sha == trajectory_checksum(trajectory)
    assert back.meta == META
    assert not list(a.parent.glob(".*"))  # no temporary left behind


def test_records_are_never_overwritten(tmp_path, trajectory):
    path = tmp_path / f"{trajectory.header.trajectory_id}.jsonl.gz"
    write_record(path, trajectory, META)
    before = path.read_bytes()
    with pytest.raises(RecordError, match="never overwritten"):
        write_record(path, make_trajectory(seed=1), META)
    assert path.read_bytes() == before


def _rewrite(path, lines):
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))


def _edit_line(path, i, edit):
    """Apply ``edit`` to the parsed line ``i`` of a gzipped record and write it back."""
    lines = gzip.decompress(path.read_bytes()).decode().splitlines()
    obj = json.loads(lines[i])
    edit(obj)
    lines[i] = json.dumps(obj)
    _rewrite(path, lines)


@pytest.fixture()
def written(tmp_path, trajectory):
    path = tmp_path / f"{trajectory.header.trajectory_id}.jsonl.gz"
    write_record(path, trajectory, META)
    return path


def test_rejects_a_record_cut_short(written):
    raw = written.read_bytes()
    written.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(RecordError, match="truncated") as e:
        read_record(written)
    assert str(written) in str(e.value)


def test_rejects_a_record_without_end_line(written):
    lines = gzip.decompress(written.read_bytes()).decode().splitlines()
    _rewrite(written, lines[:-1])
    with pytest.raises(RecordError, match=r"truncated record \(no end line"):
        read_record(written)


def test_rejects_corrupted_bytes(written):
    raw = bytearray(written.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    written.write_bytes(bytes(raw))
    with pytest.raises(RecordError, match="corrupted") as e:
        read_record(written)
    assert str(written) in str(e.value)


def test_rejects_content_that_does_not_match_the_checksum(written):
    _edit_line(written, 2, lambda stage: stage["feedback"]["field_scores"].update(target=-1.0))
    with pytest.raises(RecordError, match="sha256"):
        read_record(written)


def test_rejects_a_foreign_schema_version(written):
    _edit_line(written, 0, lambda head: head.update(schema_version=2))
    with pytest.raises(RecordError, match="schema_version 2 is not supported") as e:
        read_record(written)
    assert str(written) in str(e.value)


def test_schema_error_names_the_file_and_field(written):
    _edit_line(written, 3, lambda stage: stage.update(weights=[0.5, 0.5, 0.5]))
    with pytest.raises(RecordError, match=r"history\.weights\.1: .*sum to 1.5") as e:
        read_record(written)
    assert str(written) in str(e.value)


def test_rejects_a_record_under_another_name(tmp_path, trajectory):
    path = tmp_path / "constant-ffffffffffff.jsonl.gz"
    write_record(path, trajectory, META)
    with pytest.raises(RecordError, match="does not match the file name"):
        read_record(path)


def test_partial_record_is_appended_per_stage_and_never_accepted(tmp_path, trajectory):
    store = FileStore(tmp_path)
    tid = trajectory.header.trajectory_id
    rec = PartialRecord(store.partial / f"{tid}.jsonl", trajectory.header)
    rec.start(trajectory.history.feedback[0], 0.1)
    for t in range(2):
        rec.stage(trajectory.history.weights[t], trajectory.history.feedback[t + 1], 0.5)
    rec.close()
    assert store.partial_ids() == [tid]
    assert store.list() == []
    assert store.read_partial(tid).history.stages == 2
    with pytest.raises(RecordError, match="truncated"):
        read_record(store.partial / f"{tid}.jsonl")
    # finishing it writes the record and removes the partial
    store.write(trajectory, META)
    assert store.list() == [tid] and store.partial_ids() == []
    assert store.read(tid).trajectory == trajectory


def test_lines_follow_the_documented_layout(trajectory):
    kinds = [json.loads(line)["record"] for line in record_lines(trajectory, META)]
    assert kinds == ["header", "start"] + ["stage"] * trajectory.history.stages + ["end"]


def test_store_lists_only_finished_records(tmp_path, trajectory):
    store = FileStore(tmp_path)
    store.write(trajectory, META)
    (store.records / ".x.jsonl.gz.tmp123").write_bytes(b"partial")
    assert store.list() == [trajectory.header.trajectory_id]
    assert store.stale_temporaries() == [store.records / ".x.jsonl.gz.tmp123"]


def test_import_of_exported_trajectories_is_idempotent_and_never_overwrites(tmp_path):
    from mixagent.trajectories.storage import import_jsonl

    a = make_trajectory(trajectory_id="served-aaaaaaaaaaaa")
    b = make_trajectory(seed=1, trajectory_id="served-bbbbbbbbbbbb")
    export = tmp_path / "export.jsonl"
    export.write_text(a.model_dump_json() + "\n" + b.model_dump_json() + "\n")
    store = FileStore(tmp_path / "ds")
    assert import_jsonl(export, store) == (2, 0, [])
    assert import_jsonl(export, store) == (0, 2, [])
    assert store.read("served-bbbbbbbbbbbb").trajectory == b
    other = make_trajectory(seed=2, trajectory_id="served-aaaaaaaaaaaa")
    export.write_text(other.model_dump_json() + "\n")
    with pytest.raises(RecordError, match="already holds a different trajectory"):
        import_jsonl(export, store)
    export.write_text('{"header": {}}\n')
    with pytest.raises(RecordError, match=r"export.jsonl: line 1: trajectory\.header"):
        import_jsonl(export, store)


def test_a_short_or_pending_trajectory_is_never_a_finished_record(tmp_path, trajectory):
    from mixagent.trajectories import History

    h = trajectory.history
    short = trajectory.model_copy(update={"header": trajectory.header.model_copy(update={"horizon": h.stages + 12})})
    with pytest.raises(RecordError, match=r"incomplete: 4 stages, header.horizon is 16"):
        write_record(tmp_path / f"{trajectory.header.trajectory_id}.jsonl.gz", short, META)
    pending = trajectory.model_copy(update={
        "history": History(space=h.space, feedback=h.feedback[:3], weights=h.weights[:3]),
        "stage_wall_s": trajectory.stage_wall_s[:2]})
    with pytest.raises(RecordError, match=r"in progress: stage 2 has weights but no feedback yet"):
        write_record(tmp_path / f"{trajectory.header.trajectory_id}.jsonl.gz", pending, META)
    assert not list(tmp_path.iterdir())
    # a record written by other code with a horizon it never reached is refused on reading
    path = tmp_path / f"{trajectory.header.trajectory_id}.jsonl.gz"
    write_record(path, trajectory, META)
    text = gzip.decompress(path.read_bytes()).decode().replace('"horizon":4', '"horizon":16')
    path.write_bytes(gzip.compress(text.encode()))
    with pytest.raises(RecordError, match=rf"{path.name}: incomplete: 4 stages, header.horizon is 16"):
        read_record(path)


def test_finalising_never_replaces_a_record_that_appeared_meanwhile(tmp_path, trajectory, monkeypatch):
    path = tmp_path / f"{trajectory.header.trajectory_id}.jsonl.gz"
    real_exists = type(path).exists
    # another writer finishes the same id between our existence check and our move
    monkeypatch.setattr(type(path), "exists", lambda p: False if p == path else real_exists(p))
    path.write_bytes(b"theirs")
    with pytest.raises(RecordError, match="never overwritten"):
        write_record(path, trajectory, META)
    assert path.read_bytes() == b"theirs" and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_a_header_objective_must_name_fields_of_its_space(trajectory):
    from pydantic import ValidationError

    data = trajectory.header.model_dump()
    data["objective"] = {"field_weights": {"physics": 1.0}}
    with pytest.raises(ValidationError, match=r"objective.field_weights: unknown field\(s\) \['physics'\]"):
        type(trajectory.header).model_validate(data)


def test_provenance_round_trips_and_old_records_without_it_still_read(tmp_path, trajectory):
    prov = {"corpus": "0123456789abcdef", "base": "fedcba9876543210", "numerics": "x86_64 (AVX2); torch 2.13.0"}
    path = tmp_path / f"{trajectory.header.trajectory_id}.jsonl.gz"
    write_record(path, trajectory, replace(META, provenance=prov))
    assert read_record(path).meta.provenance == prov
    _edit_line(path, -1, lambda end: end.pop("provenance"))  # a record written before provenance existed
    assert read_record(path).meta.provenance == {}


def test_rejects_a_provenance_that_is_not_an_object_of_strings(written):
    _edit_line(written, -1, lambda end: end.update(provenance={"corpus": 7}))
    with pytest.raises(RecordError, match=r"provenance must be an object of strings, got \{'corpus': 7\}") as e:
        read_record(written)
    assert str(written) in str(e.value)
