import gzip
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import yaml

from mixagent.agent.errors import RunnerError
from mixagent.agent.generate import GenerateConfig, generate, make_plan
from mixagent.trajectories.schedules import BUILTIN_FAMILIES
from mixagent.trajectories.storage import FileStore, RecordError, RecordMeta, read_record
from tests.conftest import tiny_setting_dict


def test_plan_is_deterministic_prefix_stable_and_covers_every_family(tiny_setting):
    plan = make_plan(tiny_setting, n=30)
    assert [p.run_id for p in plan] == [p.run_id for p in make_plan(tiny_setting, n=30)]
    assert [p.run_id for p in make_plan(tiny_setting, n=12)] == [p.run_id for p in plan[:12]]
    assert len({p.run_id for p in plan}) == 30
    assert {p.policy for p in plan[: len(BUILTIN_FAMILIES)]} == set(BUILTIN_FAMILIES)
    other = make_plan(tiny_setting.model_copy(update={"seed": 1}), n=3)  # another setting hash
    assert not {p.run_id for p in other} & {p.run_id for p in plan}
    assert make_plan(tiny_setting, n=3, seed=1)[0].run_id != plan[0].run_id


def test_dataset_holds_the_plan_with_a_card(tiny_dataset, tiny_setting):
    import json

    store = FileStore(tiny_dataset)
    plan = make_plan(tiny_setting, n=9)
    assert store.list() == sorted(p.run_id for p in plan)
    card = json.loads((tiny_dataset / "card.json").read_text())
    assert card["counts"] == {"trajectories": 9, "stages": 9 * 5, "feedbacks": 9 * 6}
    assert card["families"] == dict.fromkeys(sorted(BUILTIN_FAMILIES), 1)
    assert card["setting_hash"] == tiny_setting.hash() and card["model"].startswith("llama-1x32")
    assert card["package_version"] and card["wall_time_s"]["total"] > 0
    for stored in store.load_all():
        hd = stored.trajectory.header
        item = next(p for p in plan if p.run_id == hd.trajectory_id)
        assert (hd.schedule, hd.schedule_params, hd.seed) == (item.policy, item.params, item.seed)
        assert stored.trajectory.history.stages == tiny_setting.cpt.horizon


def test_rerun_resumes_grows_and_refuses_another_plan(tiny_dataset, tiny_setting, cache_dir, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(tiny_dataset, out)
    before = {p.name: p.read_bytes() for p in (out / "records").iterdir()}
    # crash leftovers: a dead partial and a half-written temporary
    (out / "partial").mkdir(exist_ok=True)
    (out / "partial" / "cycle-000000000000.jsonl").write_text('{"record": "header"')
    (out / "records" / ".x.jsonl.gz.tmp999").write_bytes(b"\x1f\x8b")
    cfg = GenerateConfig(out=out, n=9, threads=1, cache_dir=cache_dir, progress=False)
    report = generate(cfg, tiny_setting)
    assert (report.generated, report.already_done) == (0, 9)
    assert not (out / "records" / ".x.jsonl.gz.tmp999").exists()
    assert not (out / "partial" / "cycle-000000000000.jsonl").exists()
    report = generate(GenerateConfig(out=out, n=10, threads=1, cache_dir=cache_dir, progress=False), tiny_setting)
    assert (report.generated, report.already_done) == (1, 9)
    assert all((out / "records" / name).read_bytes() == data for name, data in before.items())
    with pytest.raises(RunnerError, match=r"generate.json: families"):
        generate(GenerateConfig(out=out, n=10, families=("constant",), progress=False), tiny_setting)
    with pytest.raises(RunnerError, match=r"generate.json: setting_hash"):
        generate(GenerateConfig(out=out, n=10, progress=False), tiny_setting.model_copy(update={"seed": 5}))


def test_a_second_generator_is_locked_out(tiny_setting, tmp_path):
    import fcntl

    out = tmp_path / "locked"
    out.mkdir()
    with open(out / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        with pytest.raises(RecordError, match="another writer"):
            generate(GenerateConfig(out=out, n=1, progress=False), tiny_setting)


def test_bad_seed_or_out_is_refused_before_anything_runs(tiny_setting, tmp_path):
    with pytest.raises(RunnerError, match="--seed: must be >= 0, got -1"):
        generate(GenerateConfig(out=tmp_path / "a", n=1, seed=-1, progress=False), tiny_setting)
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunnerError, match=r"--out: .*file exists and is not a folder"):
        generate(GenerateConfig(out=tmp_path / "file", n=1, progress=False), tiny_setting)
    assert not (tmp_path / "a").exists()


def test_records_of_another_plan_are_refused(tiny_dataset, tiny_setting, cache_dir, tmp_path):
    import shutil

    from tests.trajectories.conftest import make_trajectory

    out = tmp_path / "mixed"
    shutil.copytree(tiny_dataset, out)
    stray = make_trajectory(stages=tiny_setting.cpt.horizon, trajectory_id="constant-ffffffffffff")
    stray = stray.model_copy(update={"header": stray.header.model_copy(update={"setting_hash": tiny_setting.hash()})})
    FileStore(out).write(stray, RecordMeta())
    with pytest.raises(RunnerError, match=r"constant-ffffffffffff.jsonl.gz: not an item of this folder's plan"):
        generate(GenerateConfig(out=out, n=10, threads=1, cache_dir=cache_dir, progress=False), tiny_setting)
    assert len(FileStore(out).list()) == 10  # nothing generated, nothing removed


def test_a_failing_trajectory_is_reported_and_the_others_still_finish(tiny_setting, cache_dir, tmp_path, monkeypatch):
    from mixagent.agent import registry
    from mixagent.trajectories.policy import PolicyFamily

    class Exploding:
        name = "exploding"

        def initial_weights(self, space):
            raise RuntimeError("schedule blew up")

        def next_weights(self, space, history):
            raise RuntimeError("schedule blew up")

    known = registry.policy_families()
    exploding = PolicyFamily("exploding_test", lambda c, p: Exploding(), lambda c, r, k: {})
    monkeypatch.setattr(registry, "policy_families", lambda: {**known, "exploding_test": exploding})
    out = tmp_path / "failing"
    cfg = GenerateConfig(out=out, n=3, families=("constant", "exploding_test"), threads=1, cache_dir=cache_dir,
                         progress=False)
    with pytest.raises(RunnerError,
                       match=r"(?s)1 episode\(s\) failed .* \(2 finished now\).*exploding_test-.*blew up"):
        generate(cfg, tiny_setting)
    store = FileStore(out)
    assert [t.split("-")[0] for t in store.list()] == ["constant", "constant"]
    assert [p.split("-")[0] for p in store.partial_ids()] == ["exploding_test"]  # kept for a post-mortem
    again = generate(GenerateConfig(out=out, n=1, families=("constant", "exploding_test"), threads=1,
                                    cache_dir=cache_dir, progress=False), tiny_setting)
    assert again.generated == 0 and not store.partial_ids()  # the next run discards it


def _slow_setting_file(corpus_root, tmp_path):
    """The tiny setting with longer stages, so that a kill lands inside a trajectory."""
    d = tiny_setting_dict(corpus_root)
    d["cpt"] = {**d["cpt"], "interval": 30, "horizon": 6}
    path = tmp_path / "slow-tiny.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def test_kill_9_mid_run_then_rerun_loses_nothing_duplicates_nothing(corpus_root, cache_dir, tmp_path):
    from mixagent.env.setting import load_setting

    setting_file = _slow_setting_file(corpus_root, tmp_path)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "mixagent.cli", "trajectories", "generate", "--setting", str(setting_file),
           "--n", "4", "--out", str(out), "--threads", "1", "--no-progress"]
    env = {**os.environ, "MIXAGENT_HOME": str(cache_dir)}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    store = FileStore(out)
    deadline = time.monotonic() + 180
    in_flight = None
    while time.monotonic() < deadline and proc.poll() is None:
        finished = store.list()
        partials = [p for p in store.partial.glob("*.jsonl")] if store.partial.is_dir() else []
        lines = {p: p.read_text().count("\n") for p in partials}
        # in flight: header, start and 1-3 of its 6 stages written, so it cannot finish before the kill
        busy = [p for p, n in lines.items() if 3 <= n <= 5 and p.name.removesuffix(".jsonl") not in finished]
        if finished and busy:
            os.killpg(proc.pid, signal.SIGKILL)
            in_flight = busy[0]
            break
        time.sleep(0.01)
    proc.wait(timeout=30)
    assert in_flight is not None, f"never saw a finished record and a trajectory in flight: {proc.stderr.read()}"
    assert proc.returncode == -signal.SIGKILL
    finished = {p.name: p.read_bytes() for p in store.records.glob("*.jsonl.gz")}
    assert 1 <= len(finished) < 4
    assert in_flight.name.replace(".jsonl", ".jsonl.gz") not in finished
    with pytest.raises(RecordError, match="truncated"):
        read_record(in_flight)  # the partial is never a valid record

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    plan = make_plan(load_setting(setting_file), n=4)
    assert store.list() == sorted(p.run_id for p in plan)
    for name, data in finished.items():  # finished before the kill: kept byte for byte
        assert (store.records / name).read_bytes() == data
    assert all(len(gzip.decompress(p.read_bytes()).splitlines()) == 6 + 3 for p in store.records.glob("*.gz"))
    assert [s.trajectory.history.stages for s in store.load_all()] == [6] * 4
    assert not store.partial_ids() and not store.stale_temporaries()


def _children(pid: int) -> list[int]:
    out = []
    for stat in os.listdir("/proc"):
        if stat.isdigit():
            try:
                fields = open(f"/proc/{stat}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(stat))
    return out


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_pool_workers_exit_when_the_driver_is_killed(corpus_root, cache_dir, tmp_path):
    """``kill -9`` of the driver alone (not its process group): its pool workers must not train on."""
    setting_file = _slow_setting_file(corpus_root, tmp_path)
    out = tmp_path / "orphans"
    cmd = [sys.executable, "-m", "mixagent.cli", "trajectories", "generate", "--setting", str(setting_file),
           "--n", "4", "--out", str(out), "--workers", "2", "--threads", "1", "--no-progress"]
    env = {**os.environ, "MIXAGENT_HOME": str(cache_dir)}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            partial = out / "partial"
            if partial.is_dir() and sum(p.read_text().count("\n") >= 3 for p in partial.glob("*.jsonl")) >= 2:
                break  # both workers are training
            time.sleep(0.05)
        workers = _children(proc.pid)
        assert proc.poll() is None and len(workers) >= 2, proc.stderr.read()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(_alive(w) for w in workers):
            time.sleep(0.1)
        assert not [w for w in workers if _alive(w)], "pool workers outlived the killed driver"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.slow
def test_process_pool_gives_the_same_trajectories_as_one_process(tiny_dataset, tiny_setting, cache_dir, tmp_path):
    out = tmp_path / "pool"
    report = generate(GenerateConfig(out=out, n=4, workers=2, threads=1, cache_dir=cache_dir, progress=False),
                      tiny_setting)
    assert report.generated == 4
    _assert_same_records(FileStore(out), FileStore(tiny_dataset))


def _assert_same_records(a: FileStore, b: FileStore) -> None:
    import numpy as np

    for tid in a.list():
        x, y = a.read(tid).trajectory, b.read(tid).trajectory
        assert x.header == y.header
        np.testing.assert_allclose(x.history.weight_matrix(), y.history.weight_matrix())
        np.testing.assert_allclose(x.history.field_scores(), y.history.field_scores(), rtol=1e-5)


@pytest.mark.ray
def test_ray_executor_runs_the_same_plan_on_a_local_ray(tiny_dataset, tiny_setting, cache_dir, tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "ray"
    report = generate(
        GenerateConfig(out=out, n=4, workers=2, threads=1, executor="ray", cache_dir=cache_dir, progress=False),
        tiny_setting,
    )
    assert report.generated == 4
    _assert_same_records(FileStore(out), FileStore(tiny_dataset))
    again = generate(GenerateConfig(out=out, n=4, workers=2, threads=1, executor="ray", cache_dir=cache_dir,
                                    progress=False), tiny_setting)
    assert again.generated == 0


def test_an_unknown_family_is_refused_before_anything_runs(tiny_setting, tmp_path):
    from mixagent.trajectories import ContractError

    with pytest.raises(ContractError, match="unknown policy or family 'nope'"):
        generate(GenerateConfig(out=tmp_path / "b", n=1, families=("nope",), progress=False), tiny_setting)
    assert not (tmp_path / "b").exists()  # nothing pinned: a corrected rerun is not refused


def test_domain_level_runs_record_their_action_level_and_replay_exactly(tiny_setting, cache_dir, tmp_path):
    import numpy as np

    from mixagent.trajectories import action_to_weights
    from mixagent.trajectories.replay import replay_trajectory

    out = tmp_path / "domain"
    generate(GenerateConfig(out=out, n=2, families=("dirichlet", "ramp_up"), level="domain", threads=1,
                            cache_dir=cache_dir, progress=False), tiny_setting)
    for stored in FileStore(out).load_all():
        t = stored.trajectory
        assert t.header.action.level == "domain" and t.header.schedule_params["level"] == "domain"
        assert t.header.action.beta == tiny_setting.action.beta
        tr = replay_trajectory(t)
        assert tr.actions.shape == (t.history.stages, tiny_setting.space.size)  # K-D behaviour actions
        for a, w in zip(tr.actions, t.history.weights, strict=True):
            np.testing.assert_allclose(action_to_weights(a, t.header.space, t.header.action).as_array(),
                                       w.as_array(), atol=1e-5)


def test_runs_of_another_environment_are_not_added_to_a_folder(tiny_dataset, tiny_setting, cache_dir, tmp_path):
    """A rebuilt corpus or base that differs (other package versions, torch, CPU) shows in the first
    evaluation; its runs must not join the folder under the same setting hash."""
    import shutil

    from mixagent.trajectories import History

    out = tmp_path / "drift"
    shutil.copytree(tiny_dataset, out)
    store = FileStore(out)

    def restart(stored, shift):
        t, h = stored.trajectory, stored.trajectory.history
        f0 = h.feedback[0]
        moved = f0.model_copy(update={"domain_losses": {d: v + shift for d, v in f0.domain_losses.items()}})
        stored.path.unlink()
        store.write(t.model_copy(update={"history": History(space=h.space, feedback=[moved, *h.feedback[1:]],
                                                            weights=h.weights)}), stored.meta)

    for stored in store.load_all():  # the folder "was made" by another environment
        restart(stored, 0.25)
    with pytest.raises(RunnerError, match=r"constant-\w+ starts from another evaluation .* differ by up to 0.25"):
        generate(GenerateConfig(out=out, n=10, threads=1, cache_dir=cache_dir, progress=False), tiny_setting)
    assert len(store.list()) == 9  # the new run was not written
    import multiprocessing

    with pytest.raises(RunnerError, match=r"starts from another evaluation"):  # the same with a pool:
        generate(GenerateConfig(out=out, n=12, workers=2, threads=1, cache_dir=cache_dir, progress=False), tiny_setting)
    assert not multiprocessing.active_children()  # no worker outlives the refused run
    assert len(store.list()) == 9
    restart(store.load_all()[3], 0.5)  # a folder that mixes two environments is refused as it is
    with pytest.raises(RunnerError, match=r"differ by up to 0.5"):
        generate(GenerateConfig(out=out, n=9, threads=1, cache_dir=cache_dir, progress=False), tiny_setting)


def _rewrite(store, stored, *, shift=0.0, provenance=None):
    """Rewrite one record as if another machine had made it: its first evaluation moved by ``shift``
    nats in every domain, its provenance replaced."""
    from mixagent.trajectories import History

    t, h = stored.trajectory, stored.trajectory.history
    f0 = h.feedback[0]
    moved = f0.model_copy(update={"domain_losses": {d: v + shift for d, v in f0.domain_losses.items()}})
    stored.path.unlink()
    meta = stored.meta if provenance is None else replace(stored.meta, provenance=provenance)
    store.write(t.model_copy(update={"history": History(space=h.space, feedback=[moved, *h.feedback[1:]],
                                                        weights=h.weights)}), meta)


def test_records_keep_the_provenance_of_their_environment(tiny_dataset, tiny_setting, tiny_backend, cache_dir):
    from mixagent.env.data import prepare_data
    from mixagent.env.provenance import corpus_digest, numerics, weights_digest

    stored = FileStore(tiny_dataset).load_all()
    corpus = corpus_digest(prepare_data(tiny_setting, cache_dir).manifest)
    base = weights_digest(tiny_backend._base_state)
    for s in stored:
        assert s.meta.provenance == {"corpus": corpus, "base": base, "numerics": numerics()}
    card = json.loads((tiny_dataset / "card.json").read_text())
    assert card["environments"] == [{"trajectories": len(stored), "start_drift": 0.0, "corpus": corpus,
                                     "base": base, "numerics": numerics()}]


def test_runs_on_other_float_numerics_join_the_folder_and_the_card_tells_them_apart(
    tiny_dataset, tiny_setting, cache_dir, tmp_path
):
    """Sittings on machines whose CPUs sum floats in another order start ~1e-3 nats apart: such runs
    may complete a folder (within --start-tolerance), and the card counts each environment."""
    import shutil

    out = tmp_path / "numerics"
    shutil.copytree(tiny_dataset, out)
    store = FileStore(out)
    for s in store.load_all():  # made "elsewhere", before provenance was recorded
        _rewrite(store, s, shift=0.004, provenance={})
    cfg = GenerateConfig(out=out, n=10, threads=1, cache_dir=cache_dir, progress=False)
    with pytest.raises(RunnerError, match=r"the folder's 9 records predate provenance.*--adopt-corpus"):
        generate(cfg, tiny_setting)
    with pytest.raises(RunnerError, match=r"differ by up to 0.004, more than --start-tolerance 0.001"):
        generate(replace(cfg, adopt_corpus=True, start_tolerance=0.001), tiny_setting)
    assert len(store.list()) == 9
    report = generate(replace(cfg, adopt_corpus=True), tiny_setting)
    assert report.generated == 1 and len(store.list()) == 10
    report = generate(replace(cfg, n=11), tiny_setting)  # the folder keeps the corpus it adopted
    assert report.generated == 1
    envs = json.loads((out / "card.json").read_text())["environments"]
    assert [e["trajectories"] for e in envs] == [9, 2]
    assert envs[0]["start_drift"] == 0.0 and envs[0]["numerics"] == "unrecorded"
    assert envs[1]["start_drift"] == pytest.approx(0.004, abs=1e-6) and envs[1]["numerics"] != "unrecorded"


def test_runs_on_another_corpus_are_refused_whatever_their_start(tiny_dataset, tiny_setting, cache_dir, tmp_path):
    import shutil

    out = tmp_path / "corpus"
    shutil.copytree(tiny_dataset, out)
    store = FileStore(out)
    for s in store.load_all():
        _rewrite(store, s, provenance={**s.meta.provenance, "corpus": "0123456789abcdef"})
    with pytest.raises(RunnerError, match=r"another corpus \(digest \w+\) than the folder's other records "
                                            r"\(0123456789abcdef\)"):
        generate(GenerateConfig(out=out, n=10, threads=1, cache_dir=cache_dir, progress=False), tiny_setting)
    assert len(store.list()) == 9


def test_a_negative_start_tolerance_is_refused(tiny_setting, tmp_path):
    with pytest.raises(RunnerError, match=r"--start-tolerance: must be >= 0, got -1"):
        generate(GenerateConfig(out=tmp_path / "x", n=1, start_tolerance=-1.0, progress=False), tiny_setting)
