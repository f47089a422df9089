"""Generate a dataset of real mixing trajectories: behaviour schedules driving ``DataMixingEnv``.

    mixagent trajectories generate --setting configs/math-tiny.yaml --n 256 --out data/trajectories/math-tiny
    mixagent trajectories generate ... --workers 2 --threads 1            # a local process pool
    mixagent trajectories generate ... --executor ray [--ray-address auto] # a Ray cluster

The plan is a deterministic list: item i uses family ``families[i mod F]`` (round-robin, so every
prefix of the plan covers the families evenly), seed ``SeedSequence([seed, i])``, and schedule
parameters drawn from that seed; its trajectory id hashes (setting hash, family, parameters, seed).
A plan of N items is a prefix of the plan of N' > N items, so ``--n`` can grow across sessions.

Resume. Finished trajectories are files ``records/<id>.jsonl.gz`` written atomically by this driver
process alone; a rerun of the same command skips every id already finished, discards in-progress
``partial/`` records and crash temporaries, and runs the rest. A ``kill -9`` at any moment therefore
loses at most the trajectories in flight, never a finished one, and never accepts a partial one. A
lock file (``DIR/.lock``, released by the kernel when the process dies) keeps two generators out of
one folder. ``generate.json`` pins the setting hash, families, seed and level of a folder: a rerun
that disagrees is refused rather than mixing two plans, and so is a run whose first evaluation
is trained on another corpus or starts from another base model than the folder's records (see
``environment.py``). Float numerics may differ between the machines of several sittings: each
record keeps its provenance (corpus and base digests, CPU and library versions), and the card
counts the runs per environment.

Workers. One worker = one process holding one env (one model), reused across trajectories;
``reset`` restores the base model from memory. ``threads`` sets torch's intra-op threads per worker
(total CPU use ≈ workers × threads).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mixagent.trajectories.contract import SCHEMA_VERSION, Trajectory, TrajectoryHeader, stable_hash
from mixagent.trajectories.environment import START_TOLERANCE, FolderEnvironment, ForeignEnvironmentError
from mixagent.trajectories.schedules import (
    BUILTIN_FAMILIES,
    Level,
    ScheduleContext,
    build_schedule,
    draw_params,
    get_family,
)
from mixagent.trajectories.stats import TrajectorySummary, build_card, summarise
from mixagent.trajectories.storage import (
    FileStore,
    PartialRecord,
    RecordMeta,
    default_meta,
    read_json_object,
    write_json_atomic,
)

__all__ = [
    "GenerateConfig",
    "GenerateError",
    "GenerateReport",
    "PlanItem",
    "make_plan",
    "trajectory_id",
    "TrajectoryRunner",
    "import_plugins",
    "generate",
]

log = logging.getLogger(__name__)

Executor = Literal["local", "ray"]


class GenerateError(RuntimeError):
    """Generation cannot start or go on (the message says why and names the file)."""


@dataclass(frozen=True)
class GenerateConfig:
    """One generation run. Fields pinned in ``generate.json`` are marked (pinned)."""

    out: Path
    """Dataset folder (created; resumed when it exists)."""
    n: int
    """Number of trajectories the folder should hold from this plan (a prefix of the plan)."""
    families: tuple[str, ...] = BUILTIN_FAMILIES
    """Behaviour schedule families, in round-robin order (pinned)."""
    seed: int = 0
    """Base seed of the plan (pinned)."""
    level: Level | None = None
    """Schedule level, ``field`` or ``domain``; None: the setting's action level (pinned)."""
    workers: int = 1
    """Parallel workers, each holding one env; 1 runs in this process."""
    threads: int = 0
    """torch threads per worker; 0: cpu_count // workers (at least 1)."""
    executor: Executor = "local"
    """``local``: this process or a process pool; ``ray``: Ray actors."""
    ray_address: str | None = None
    """Ray cluster address (None: start a local Ray instance)."""
    cache_dir: Path | None = None
    """Cache of corpora and base models (default ``$MIXAGENT_HOME``)."""
    progress: bool = True
    """Show a progress bar with an ETA (otherwise one log line per trajectory)."""
    start_tolerance: float = START_TOLERANCE
    """Refuse a run whose first evaluation differs from the folder's by more (nats, any domain)."""
    adopt_corpus: bool = False
    """Let a folder whose records all predate provenance take this machine's corpus digest."""
    plugins: tuple[str, ...] = ()
    """Modules imported (here and in every worker) before families are resolved: they register
    extra families, e.g. online baselines with noise via ``register_policy_family``."""

    def resolved_threads(self) -> int:
        return self.threads or max(1, (os.cpu_count() or 1) // max(self.workers, 1))


@dataclass(frozen=True)
class PlanItem:
    index: int
    family: str
    seed: int
    params: dict[str, Any]
    trajectory_id: str


@dataclass
class GenerateReport:
    out: Path
    planned: int
    already_done: int
    generated: int = 0
    wall_s: float = 0.0
    seconds_per_trajectory: list[float] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    """``<id>: <error>`` of the trajectories that raised (left out; a rerun retries them)."""


def trajectory_id(setting_hash: str, family: str, params: dict[str, Any], seed: int) -> str:
    """``<family>-<hash>``, deterministic from (setting hash, schedule and its parameters, seed)."""
    h = stable_hash({"setting": setting_hash, "schedule": family, "params": params, "seed": seed})
    return f"{family}-{h[:12]}"


def make_plan(setting: Any, *, n: int, families: Sequence[str] = BUILTIN_FAMILIES, seed: int = 0,
              level: Level | None = None) -> list[PlanItem]:
    """The first ``n`` items of the deterministic plan for ``setting`` (see the module docstring)."""
    if not families:
        raise GenerateError("families: at least one schedule family is needed")
    for f in families:
        get_family(f)
    level = level or setting.action.level
    ctx = ScheduleContext(setting.space, setting.cpt.horizon, setting.action)
    h = setting.hash()
    plan = []
    for i in range(n):
        family = families[i % len(families)]
        s = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        params = draw_params(family, ctx, s, index=i // len(families), level=level)
        plan.append(PlanItem(i, family, s, params, trajectory_id(h, family, params, s)))
    return plan


# ----- workers ------------------------------------------------------------------------------------


def import_plugins(modules: Sequence[str]) -> None:
    """Import the modules that register extra schedule families."""
    import importlib  # noqa: PLC0415

    for m in modules:
        try:
            importlib.import_module(m)
        except ImportError as e:
            raise GenerateError(f"--plugin: cannot import {m!r} ({e})") from None


class TrajectoryRunner:
    """One env (one model in this process), reused for many trajectories."""

    def __init__(self, setting: dict[str, Any], cache_dir: str | None, threads: int, plugins: Sequence[str] = ()):
        import torch  # noqa: PLC0415

        import_plugins(plugins)

        from mixagent import __version__  # noqa: PLC0415
        from mixagent.env.mixing_env import DataMixingEnv  # noqa: PLC0415
        from mixagent.env.setting import load_setting  # noqa: PLC0415

        torch.set_num_threads(max(1, threads))
        self.setting = load_setting(setting)
        self.env = DataMixingEnv(self.setting, cache_dir=cache_dir)
        self.version = __version__
        self.ctx = ScheduleContext(self.setting.space, self.setting.cpt.horizon, self.setting.action)

    def header(self, item: PlanItem) -> TrajectoryHeader:
        s = self.setting
        return TrajectoryHeader(
            trajectory_id=item.trajectory_id,
            setting_name=s.name,
            setting_hash=s.hash(),
            model=self.env.model_description,
            space=s.space,
            objective=s.objective,
            action=self.ctx.spec(item.params.get("level", s.action.level)),
            horizon=s.cpt.horizon,
            interval=s.cpt.interval,
            schedule=item.family,
            schedule_params=item.params,
            seed=item.seed,
            package_version=self.version,
        )

    def run(self, item: PlanItem, partial_dir: str | None = None) -> dict[str, Any]:
        """Run one trajectory; append its stages to ``partial_dir/<id>.jsonl`` when that folder
        exists here (on a remote Ray node it may not). Returns JSON-able trajectory and metadata."""
        t_start = time.perf_counter()
        header = self.header(item)
        schedule = build_schedule(item.family, item.params, self.ctx)
        partial = None
        if partial_dir and Path(partial_dir).is_dir():
            partial = PartialRecord(Path(partial_dir) / f"{item.trajectory_id}.jsonl", header)
        try:
            # Wall times are measured here around the env calls (train + evaluate of each stage).
            t0 = time.perf_counter()
            self.env.reset(seed=item.seed)
            start_s = time.perf_counter() - t0
            if partial:
                partial.start(self.env.history.feedback[0], start_s)
            walls: list[float] = []
            truncated = False
            while not truncated:
                w = schedule.next_weights(self.env.history)
                t0 = time.perf_counter()
                _, _, _, truncated, _ = self.env.step_weights(w)
                walls.append(time.perf_counter() - t0)
                if partial:
                    partial.stage(w, self.env.history.feedback[-1], walls[-1])
        finally:
            if partial:
                partial.close()
        traj = Trajectory(header=header, history=self.env.history, stage_wall_s=walls)
        meta = default_meta(time.perf_counter() - t_start, start_s, self.env.backend.provenance())
        return {"trajectory": traj.model_dump(mode="json"), "meta": asdict(meta)}


_WORKER: TrajectoryRunner | None = None


def _exit_with_parent(interval_s: float = 1.0) -> None:
    """Pool workers do not notice a ``kill -9`` of the driver: without this they would train their
    trajectory to the end for nobody (competing with the resumed run) and then wait forever."""
    import threading  # noqa: PLC0415

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _init_worker(setting: dict[str, Any], cache_dir: str | None, threads: int, plugins: Sequence[str]) -> None:
    global _WORKER
    _exit_with_parent()
    _WORKER = TrajectoryRunner(setting, cache_dir, threads, plugins)


def _run_in_worker(item: PlanItem, partial_dir: str | None) -> dict[str, Any]:
    assert _WORKER is not None, "worker not initialised"
    return _WORKER.run(item, partial_dir)


Outcome = tuple[PlanItem, "dict[str, Any] | Exception"]
"""A finished plan item with its result, or the exception that ended it (reported, not fatal)."""


def _results_local(cfg: GenerateConfig, setting: dict[str, Any], todo: list[PlanItem], partial: str) -> Iterator[Outcome]:
    cache = str(cfg.cache_dir) if cfg.cache_dir else None
    threads = cfg.resolved_threads()
    if cfg.workers <= 1:
        runner = TrajectoryRunner(setting, cache, threads, cfg.plugins)
        for item in todo:
            try:
                result: dict[str, Any] | Exception = runner.run(item, partial)
            except Exception as e:  # noqa: BLE001 - reported per trajectory by the driver
                result = e
            yield item, result
        return
    import multiprocessing as mp  # noqa: PLC0415
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait  # noqa: PLC0415
    from concurrent.futures.process import BrokenProcessPool  # noqa: PLC0415

    pool = ProcessPoolExecutor(
        max_workers=cfg.workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
        initargs=(setting, cache, threads, cfg.plugins),
    )
    finished = False
    try:
        queue = iter(todo)
        pending: dict[Any, PlanItem] = {}
        for item in queue:  # keep exactly one task per worker in flight, in plan order
            pending[pool.submit(_run_in_worker, item, partial)] = item
            if len(pending) >= cfg.workers:
                break
        while pending:
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for fut in sorted(done, key=lambda f: pending[f].index):
                item = pending.pop(fut)
                exc = fut.exception()
                if isinstance(exc, BrokenProcessPool):  # a worker died (OOM kill, segfault): stop here
                    raise GenerateError(f"a worker process died ({exc}); rerun the same command to resume") from exc
                yield item, exc if exc is not None else fut.result()
                nxt = next(queue, None)
                if nxt is not None:
                    pending[pool.submit(_run_in_worker, nxt, partial)] = nxt
        finished = True
    finally:
        if not finished:  # the driver stopped early (an error, or the consumer closed us): stop the
            # trajectories in flight now instead of training them to the end for nobody
            for proc in list((getattr(pool, "_processes", None) or {}).values()):
                proc.terminate()
        pool.shutdown(wait=True, cancel_futures=True)


def _results_ray(cfg: GenerateConfig, setting: dict[str, Any], todo: list[PlanItem], partial: str) -> Iterator[Outcome]:
    try:
        import ray  # noqa: PLC0415
    except ImportError as e:
        raise GenerateError("--executor ray needs Ray: pip install 'mixagent[ray]'") from e
    threads = cfg.resolved_threads()
    started = not ray.is_initialized()
    if started:
        kwargs: dict[str, Any] = {"address": cfg.ray_address, "include_dashboard": False, "log_to_driver": False}
        if cfg.ray_address is None:  # a local instance sized for the requested workers
            kwargs["num_cpus"] = max(os.cpu_count() or 1, cfg.workers * threads)
        ray.init(**kwargs)
    try:
        remote_runner = ray.remote(num_cpus=threads)(TrajectoryRunner)
        cache = str(cfg.cache_dir) if cfg.cache_dir else None
        actors = [remote_runner.remote(setting, cache, threads, cfg.plugins) for _ in range(max(cfg.workers, 1))]
        queue = iter(todo)
        pending: dict[Any, tuple[Any, PlanItem]] = {}
        for actor in actors:
            item = next(queue, None)
            if item is not None:
                pending[actor.run.remote(item, partial)] = (actor, item)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            actor, item = pending.pop(done[0])
            try:
                result: dict[str, Any] | Exception = ray.get(done[0])
            except ray.exceptions.ActorDiedError as e:
                raise GenerateError(f"a Ray worker died ({e}); rerun the same command to resume") from e
            except Exception as e:  # noqa: BLE001 - a RayTaskError wraps the trajectory's own error
                result = e
            yield item, result
            item = next(queue, None)
            if item is not None:
                pending[actor.run.remote(item, partial)] = (actor, item)
    finally:
        if started:
            ray.shutdown()


# ----- the driver ---------------------------------------------------------------------------------


def _pin(cfg: GenerateConfig, setting: Any, store: FileStore, level: Level) -> None:
    """Write (or check against) ``generate.json`` and ``setting.json``."""
    pinned = {
        "schema_version": SCHEMA_VERSION,
        "setting_name": setting.name,
        "setting_hash": setting.hash(),
        "families": list(cfg.families),
        "seed": cfg.seed,
        "level": level,
    }
    path = store.root / "generate.json"
    if path.exists():
        old = read_json_object(path)
        for key, value in pinned.items():
            if old.get(key) != value:
                raise GenerateError(
                    f"{path}: {key} is {old.get(key)!r} in this folder but {value!r} in this run; "
                    "use another --out (a folder holds one plan)"
                )
    write_json_atomic(path, {**pinned, "n": cfg.n, "workers": cfg.workers, "threads": cfg.resolved_threads(),
                             "executor": cfg.executor, "plugins": list(cfg.plugins)})
    setting_path = store.root / "setting.json"
    if not setting_path.exists():
        write_json_atomic(setting_path, setting.model_dump(mode="json"))


def write_card(store: FileStore, summaries: dict[str, TrajectorySummary]) -> dict[str, Any]:
    card = build_card(list(summaries.values()))
    write_json_atomic(store.root / "card.json", card)
    return card


def _check_plan_membership(cfg: GenerateConfig, setting: Any, level: Level, store: FileStore, done: set[str]) -> None:
    """Refuse a folder holding records that are not items of its plan (drawn by other code, a
    changed plugin or another numpy): resuming would silently mix two plans."""
    if not done:
        return
    # Workers finish out of order, so stored ids may lie a little past the first max(N, stored)
    # items; twice that plus 64 covers any resume history with up to 64 workers.
    reach = 2 * max(cfg.n, len(done)) + 64
    known = {it.trajectory_id for it in make_plan(setting, n=reach, families=cfg.families, seed=cfg.seed, level=level)}
    foreign = sorted(done - known)
    if foreign:
        raise GenerateError(
            f"{store.path_of(foreign[0])}: not an item of this folder's plan (the first {reach} items of "
            f"families {list(cfg.families)}, seed {cfg.seed}, level {level}); {len(foreign)} such record(s). "
            "They were drawn by other code; move them out or use another --out"
        )


def generate(cfg: GenerateConfig, setting: Any) -> GenerateReport:
    """Run (or resume) the plan of ``cfg`` for ``setting``; see the module docstring.

    A trajectory that raises is logged and left out (the next run retries it); the others go on,
    and a :class:`GenerateError` listing the failures ends the run."""
    if cfg.n < 0:
        raise GenerateError(f"--n: must be >= 0, got {cfg.n}")
    if cfg.workers < 1:
        raise GenerateError(f"--workers: must be >= 1, got {cfg.workers}")
    if cfg.seed < 0:
        raise GenerateError(f"--seed: must be >= 0, got {cfg.seed}")
    if not cfg.start_tolerance >= 0:
        raise GenerateError(f"--start-tolerance: must be >= 0, got {cfg.start_tolerance}")
    if Path(cfg.out).exists() and not Path(cfg.out).is_dir():
        raise GenerateError(f"--out: {cfg.out} exists and is not a folder")
    level: Level = cfg.level or setting.action.level
    import_plugins(cfg.plugins)
    plan = make_plan(setting, n=cfg.n, families=cfg.families, seed=cfg.seed, level=level)  # checks families
    store = FileStore(cfg.out)
    with store.lock("generate"):
        _pin(cfg, setting, store, level)
        # Nothing else writes here while we hold the lock: temporaries and partials are dead.
        for tmp in store.stale_temporaries():
            tmp.unlink()
        for pid in store.partial_ids():
            (store.partial / f"{pid}.jsonl").unlink()
        store.partial.mkdir(parents=True, exist_ok=True)
        stored = store.load_all()
        summaries = {s.trajectory.header.trajectory_id: summarise(s) for s in stored}
        done = set(summaries)
        _check_plan_membership(cfg, setting, level, store, done)
        # The folder itself must be one environment (a corpus adopted before is kept); new runs join it.
        try:
            environment = FolderEnvironment.of(store.root, stored, cfg.start_tolerance)
        except ForeignEnvironmentError as e:
            raise GenerateError(str(e)) from None
        environment.adopt_corpus = cfg.adopt_corpus
        todo = [it for it in plan if it.trajectory_id not in done]
        report = GenerateReport(store.root, len(plan), len(plan) - len(todo))
        write_card(store, summaries)
        if not todo:
            return report
        results = (_results_ray if cfg.executor == "ray" else _results_local)(
            cfg, setting.model_dump(mode="json"), todo, str(store.partial)
        )
        from tqdm.auto import tqdm  # noqa: PLC0415

        t0 = time.perf_counter()
        t_first: float | None = None
        with closing(results), tqdm(total=len(plan), initial=report.already_done, unit="traj", desc=setting.name,
                                    disable=not cfg.progress, smoothing=0.0, dynamic_ncols=True) as bar:
            for item, res in results:
                if isinstance(res, Exception):
                    report.failed.append(f"{item.trajectory_id}: {type(res).__name__}: {res}")
                    log.error("%s failed (left out; the next run retries it): %s", item.trajectory_id, res)
                    continue
                traj = Trajectory.model_validate(res["trajectory"])
                meta = RecordMeta(**res["meta"])
                try:
                    environment.admit(traj, meta.provenance)
                except ForeignEnvironmentError as e:
                    raise GenerateError(str(e)) from None
                store.write(traj, meta)
                s = summaries[traj.header.trajectory_id] = summarise(traj, meta)
                write_card(store, summaries)
                report.generated += 1
                report.seconds_per_trajectory.append(meta.wall_s)
                bar.set_postfix(last=f"{s.family} B={s.final_balanced:+.4f}", refresh=False)
                bar.update(1)
                if not cfg.progress:
                    now = time.perf_counter()
                    t_first = t_first or now  # the rate after the first result leaves out start-up
                    rate = (now - t_first) / (report.generated - 1) if report.generated > 1 else now - t0
                    eta = rate * (len(todo) - report.generated - len(report.failed))
                    log.warning("%d/%d %s %s B=%+.4f (%.0fs; ETA %.0f min)", report.already_done + report.generated,
                                len(plan), traj.header.trajectory_id, s.family, s.final_balanced, meta.wall_s, eta / 60)
        report.wall_s = time.perf_counter() - t0
        if not any(store.partial.iterdir()):
            store.partial.rmdir()
    if report.failed:
        raise GenerateError(
            f"{len(report.failed)} trajectory(ies) failed and were left out ({report.generated} finished now); "
            "rerun the same command to retry them:\n  " + "\n  ".join(report.failed)
        )
    return report
