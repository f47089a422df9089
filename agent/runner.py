"""The runner: drives the real env with any ``MixingPolicy`` over seeds, resumably, in parallel.

Trajectory generation (behaviour schedules, ``agent/generate.py``) and evaluation (baselines,
hand schedules and learned policies, ``agent/evaluate.py``) are the same loop: an
:class:`EpisodeSpec` names a policy (a ``mixagent.policies`` name and its JSON parameters, or a policy
artifact folder), a seed and an objective; :func:`run_episodes` runs every episode of a list that
its dataset folder does not hold yet and writes each as a trajectory record. A schedule is just a
policy that ignores the feedback.

Seeds are paired: the env's sampling stream comes only from ``Episode.seed``, so two policies run
with one seed start from the same base and draw from the same generator.

Trainer-side methods (``env/trainer_side.py``: TANDEM, Aioli) are named like policies; the worker
runs each interval through the backend's hook (``DataMixingEnv.step_method``) instead of asking for
weights, records the interval's effective mixture as the stage's weights, the method's parameters in
the header, and each decision's log and overhead seconds in the record's ``RecordMeta.method``.

Resume. Finished episodes are files ``records/<id>.jsonl.gz`` written atomically by the driver
process alone; a rerun skips every id already finished, discards in-progress ``partial/`` records
and crash temporaries, and runs the rest. A ``kill -9`` at any moment loses at most the episodes in
flight. A lock file (``DIR/.lock``) keeps two drivers out of one folder, and a folder is one
environment (``trajectories/environment.py``): a run trained on another corpus or from another
base is refused.

Workers. One worker = one process holding one env (one model), reused across episodes; ``reset``
restores the base model from memory. ``threads`` sets torch's intra-op threads per worker (total
CPU use ≈ workers × threads). ``executor="ray"`` runs the same workers as Ray actors; a setting
whose ``runtime.device`` is ``cuda`` (or ``auto`` on a cluster with GPUs) has each actor reserve
``gpus_per_worker`` GPUs (:func:`ray_actor_options`). The local pool leaves GPUs to CUDA itself.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Generator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tqdm.auto import tqdm

from mixagent import __version__
from mixagent.agent.errors import RunnerError
from mixagent.agent.onnx_policy import load_artifact
from mixagent.agent.registry import build_policy
from mixagent.env.pools import POOL_PARAM
from mixagent.trajectories.contract import Objective, Trajectory, TrajectoryHeader
from mixagent.trajectories.environment import START_TOLERANCE, FolderEnvironment, ForeignEnvironmentError
from mixagent.trajectories.policy import MixingPolicy, PolicyContext
from mixagent.trajectories.stats import TrajectorySummary, build_card, summarise
from mixagent.trajectories.storage import (
    FileStore,
    PartialRecord,
    RecordMeta,
    StoredTrajectory,
    default_meta,
    read_json_object,
    write_json_atomic,
)

if TYPE_CHECKING:
    from mixagent.env.setting import Setting
    from mixagent.env.trainer_side import TrainerSideMethod

__all__ = [
    "Executor",
    "EpisodeSpec",
    "RunnerConfig",
    "RunnerError",
    "RunReport",
    "EpisodeWorker",
    "FolderPin",
    "ray_actor_options",
    "run_episodes",
    "write_card",
]

log = logging.getLogger(__name__)

Executor = Literal["local", "ray"]



@dataclass(frozen=True)
class EpisodeSpec:
    """One run to make: ``policy`` (a ``mixagent.policies`` name) with ``params``, or the policy
    artifact in folder ``artifact``, on the runner's setting with ``seed``.

    ``run_id`` names the record; ``label`` (default: the policy name) and ``params`` go into the
    header as ``schedule`` and ``schedule_params``; ``objective`` (default: the setting's) is both
    what the policy is built for and the header's objective. ``pool`` (default: none, the full
    train split) caps each domain's training text for this run (``env/pools.py``); the header
    records it as ``schedule_params["pool"]``."""

    run_id: str
    policy: str
    params: dict[str, Any]
    seed: int
    index: int = 0
    label: str | None = None
    objective: Objective | None = None
    artifact: str | None = None
    pool: dict[str, float] | None = None


@dataclass(frozen=True)
class RunnerConfig:
    """How episodes run. Every field is a plain value so a config crosses process boundaries."""

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
    """Show a progress bar with an ETA (otherwise one log line per episode)."""
    start_tolerance: float = START_TOLERANCE
    """Refuse a run whose first evaluation differs from the folder's by more (nats, any domain)."""
    adopt_corpus: bool = False
    """Let a folder whose records all predate provenance take this machine's corpus digest."""
    gpus_per_worker: float = 1.0
    """GPUs a Ray worker reserves (``num_gpus``) when the setting's model computes on CUDA; a fraction
    lets several small proxies share one GPU. Ignored on the CPU and by the local executor."""

    def resolved_threads(self) -> int:
        return self.threads or max(1, (os.cpu_count() or 1) // max(self.workers, 1))

    def check(self) -> None:
        if self.workers < 1:
            raise RunnerError(f"--workers: must be >= 1, got {self.workers}")
        if self.executor not in ("local", "ray"):
            raise RunnerError(f"--executor: must be 'local' or 'ray', got {self.executor!r}")
        if not self.start_tolerance >= 0:
            raise RunnerError(f"--start-tolerance: must be >= 0, got {self.start_tolerance}")
        if not self.gpus_per_worker > 0:
            raise RunnerError(f"gpus_per_worker: must be > 0, got {self.gpus_per_worker}")


@dataclass
class RunReport:
    out: Path
    planned: int
    already_done: int
    generated: int = 0
    wall_s: float = 0.0
    seconds_per_trajectory: list[float] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    """``<id>: <error>`` of the episodes that raised (left out; a rerun retries them)."""


# ----- workers ------------------------------------------------------------------------------------


class EpisodeWorker:
    """One env (one model in this process), reused for many episodes."""

    def __init__(self, setting: dict[str, Any], cache_dir: str | None, threads: int):
        # lazy: torch and the env load in the process that runs episodes, not in a driver that only
        # plans and collects (nor where this module is imported for its types)
        import torch  # noqa: PLC0415

        from mixagent.env.mixing_env import DataMixingEnv  # noqa: PLC0415
        from mixagent.env.setting import load_setting  # noqa: PLC0415

        torch.set_num_threads(max(1, threads))
        self.setting = load_setting(setting)
        self.env = DataMixingEnv(self.setting, cache_dir=cache_dir)
        self.version = __version__
        self._artifacts: dict[str, Any] = {}

    def context(self, objective: Objective | None = None) -> PolicyContext:
        s = self.setting
        return PolicyContext(s.space, s.cpt.horizon, s.action, objective or s.objective)

    def header(self, ep: EpisodeSpec, method: TrainerSideMethod | None = None) -> TrajectoryHeader:
        """The record's header; a trainer-side ``method`` adds its parameters (defaults included)."""
        s = self.setting
        params = ep.params if method is None else {**ep.params, **method.params}
        return TrajectoryHeader(
            trajectory_id=ep.run_id,
            setting_name=s.name,
            setting_hash=s.hash(),
            model=self.env.model_description,
            space=s.space,
            objective=ep.objective or s.objective,
            action=self.context().spec(ep.params.get("level", s.action.level)),
            horizon=s.cpt.horizon,
            interval=s.cpt.interval,
            schedule=ep.label or ep.policy,
            schedule_params=params if ep.pool is None else {**params, POOL_PARAM: ep.pool},
            seed=ep.seed,
            package_version=self.version,
        )

    def policy(self, ep: EpisodeSpec) -> MixingPolicy:
        ctx = self.context(ep.objective)
        if ep.artifact is None:
            return build_policy(ep.policy, ep.params, ctx)
        if ep.artifact not in self._artifacts:
            self._artifacts[ep.artifact] = load_artifact(ep.artifact)[1]
        return self._artifacts[ep.artifact](ctx.space, ctx.horizon, ctx.objective)

    def run(self, ep: EpisodeSpec, partial_dir: str | None = None) -> dict[str, Any]:
        """Run one episode; append its stages to ``partial_dir/<id>.jsonl`` when that folder exists
        here (on a remote Ray node it may not). Returns JSON-able trajectory and metadata."""
        t_start = time.perf_counter()
        policy = self.policy(ep)
        # lazy: the hook's module imports torch, which only a worker process needs
        from mixagent.env.trainer_side import TrainerSideMethod  # noqa: PLC0415

        method = policy if isinstance(policy, TrainerSideMethod) else None
        if method is not None:  # refused before anything trains (the harness checks it up front too)
            method.check_interval(self.setting.cpt.interval, self.setting.space)
        header = self.header(ep, method)
        space = self.setting.space
        decisions: list[dict[str, Any]] = []
        partial = None
        if partial_dir and Path(partial_dir).is_dir():
            partial = PartialRecord(Path(partial_dir) / f"{ep.run_id}.jsonl", header)
        try:
            # Wall times are measured here around the env calls (train + evaluate of each stage).
            t0 = time.perf_counter()
            self.env.reset(seed=ep.seed, options=None if ep.pool is None else {"pool": ep.pool})
            start_s = time.perf_counter() - t0
            if partial:
                partial.start(self.env.history.feedback[0], start_s)
            walls: list[float] = []
            truncated = False
            while not truncated:
                if method is None:
                    w = policy.next_weights(space, self.env.history)
                    t0 = time.perf_counter()
                    _, _, _, truncated, _ = self.env.step_weights(w)
                else:  # the method acts inside the interval; the stage's weights are its effective mixture
                    t0 = time.perf_counter()
                    _, _, _, truncated, info = self.env.step_method(method, ep.objective or self.setting.objective)
                    w = self.env.history.weights[-1]
                    decisions.append({"t": len(decisions), **info["method"], **self.env.last_method_seconds})
                walls.append(time.perf_counter() - t0)
                if partial:
                    partial.stage(w, self.env.history.feedback[-1], walls[-1])
        finally:
            if partial:
                partial.close()
        traj = Trajectory(header=header, history=self.env.history, stage_wall_s=walls)
        meta = default_meta(time.perf_counter() - t_start, start_s, self.env.backend.provenance(),
                            method=None if method is None else method_record(method.name, decisions))
        return {"trajectory": traj.model_dump(mode="json"), "meta": asdict(meta)}


def method_record(name: str, decisions: list[dict[str, Any]]) -> dict[str, Any]:
    """What a record keeps of a trainer-side method's run (``RecordMeta.method``): per decision its
    log and seconds, and the mean overhead per decision in CPU-seconds beside the model's own."""
    def mean(key: str) -> float:
        return sum(d.get(key, 0.0) for d in decisions) / max(len(decisions), 1)

    return {"name": name, "decisions": decisions, "overhead_cpu_s_per_decision": mean("overhead_cpu_s"),
            "train_cpu_s_per_decision": mean("train_cpu_s")}


_WORKER: EpisodeWorker | None = None


def _exit_with_parent(interval_s: float = 1.0) -> None:
    """Pool workers do not notice a ``kill -9`` of the driver: without this they would train their
    episode to the end for nobody (competing with the resumed run) and then wait forever."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _init_worker(setting: dict[str, Any], cache_dir: str | None, threads: int) -> None:
    global _WORKER
    _exit_with_parent()
    _WORKER = EpisodeWorker(setting, cache_dir, threads)


def _run_in_worker(ep: EpisodeSpec, partial_dir: str | None) -> dict[str, Any]:
    assert _WORKER is not None, "worker not initialised"
    return _WORKER.run(ep, partial_dir)


Outcome = tuple[EpisodeSpec, "dict[str, Any] | Exception"]
"""A finished episode with its result, or the exception that ended it (reported, not fatal)."""


def _results_local(cfg: RunnerConfig, setting: dict[str, Any], todo: list[EpisodeSpec],
                   partial: str) -> Generator[Outcome, None, None]:
    cache = str(cfg.cache_dir) if cfg.cache_dir else None
    threads = cfg.resolved_threads()
    if cfg.workers <= 1:
        worker = EpisodeWorker(setting, cache, threads)
        for ep in todo:
            try:
                result: dict[str, Any] | Exception = worker.run(ep, partial)
            except Exception as e:  # reported per episode by the driver
                result = e
            yield ep, result
        return
    pool = ProcessPoolExecutor(
        max_workers=cfg.workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
        initargs=(setting, cache, threads),
    )
    finished = False
    try:
        queue = iter(todo)
        pending: dict[Any, EpisodeSpec] = {}
        for ep in queue:  # keep exactly one task per worker in flight, in plan order
            pending[pool.submit(_run_in_worker, ep, partial)] = ep
            if len(pending) >= cfg.workers:
                break
        while pending:
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for fut in sorted(done, key=lambda f: pending[f].index):
                ep = pending.pop(fut)
                exc = fut.exception()
                if isinstance(exc, BrokenProcessPool):  # a worker died (OOM kill, segfault): stop here
                    raise RunnerError(f"a worker process died ({exc}); rerun the same command to resume") from exc
                if exc is not None and not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: not ours
                    raise exc
                yield ep, exc if exc is not None else fut.result()
                nxt = next(queue, None)
                if nxt is not None:
                    pending[pool.submit(_run_in_worker, nxt, partial)] = nxt
        finished = True
    finally:
        if not finished:  # the driver stopped early (an error, or the consumer closed us): stop the
            # episodes in flight now instead of training them to the end for nobody
            for proc in list((getattr(pool, "_processes", None) or {}).values()):
                proc.terminate()
        pool.shutdown(wait=True, cancel_futures=True)


def ray_actor_options(cfg: RunnerConfig, setting: dict[str, Any], cluster_gpus: float) -> dict[str, Any]:
    """The resources one Ray worker reserves: ``threads`` CPUs, and ``gpus_per_worker`` GPUs when the
    setting's ``runtime.device`` is ``cuda``, or ``auto`` on a cluster that has GPUs (``cluster_gpus``,
    from ``ray.cluster_resources()``). Without a GPU reserved Ray hides every GPU from the actor, so
    ``auto`` then resolves to the CPU there."""
    device = setting.get("runtime", {}).get("device", "cpu")
    cuda = device == "cuda" or (device == "auto" and cluster_gpus > 0)
    return {"num_cpus": cfg.resolved_threads(), "num_gpus": cfg.gpus_per_worker if cuda else 0}


def _results_ray(cfg: RunnerConfig, setting: dict[str, Any], todo: list[EpisodeSpec],
                 partial: str) -> Generator[Outcome, None, None]:
    try:
        import ray  # noqa: PLC0415 - the optional `ray` extra
    except ImportError as e:
        raise RunnerError("--executor ray needs Ray: pip install 'mixagent[ray]'") from e
    threads = cfg.resolved_threads()
    started = not ray.is_initialized()
    if started:
        kwargs: dict[str, Any] = {"address": cfg.ray_address, "include_dashboard": False, "log_to_driver": False}
        if cfg.ray_address is None:  # a local instance sized for the requested workers
            kwargs["num_cpus"] = max(os.cpu_count() or 1, cfg.workers * threads)
        ray.init(**kwargs)
    try:
        options = ray_actor_options(cfg, setting, float(ray.cluster_resources().get("GPU", 0)))
        remote_worker = ray.remote(**options)(EpisodeWorker)
        cache = str(cfg.cache_dir) if cfg.cache_dir else None
        actors = [remote_worker.remote(setting, cache, threads) for _ in range(max(cfg.workers, 1))]
        queue = iter(todo)
        pending: dict[Any, tuple[Any, EpisodeSpec]] = {}
        for actor in actors:
            ep = next(queue, None)
            if ep is not None:
                pending[actor.run.remote(ep, partial)] = (actor, ep)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            actor, ep = pending.pop(done[0])
            try:
                result: dict[str, Any] | Exception = ray.get(done[0])
            except ray.exceptions.ActorDiedError as e:
                raise RunnerError(f"a Ray worker died ({e}); rerun the same command to resume") from e
            except Exception as e:  # a RayTaskError wraps the episode's own error
                result = e
            yield ep, result
            ep = next(queue, None)
            if ep is not None:
                pending[actor.run.remote(ep, partial)] = (actor, ep)
    finally:
        if started:
            ray.shutdown()


# ----- the driver ---------------------------------------------------------------------------------


def write_card(store: FileStore, summaries: dict[str, TrajectorySummary]) -> dict[str, Any]:
    card = build_card(list(summaries.values()))
    write_json_atomic(store.root / "card.json", card)
    return card


@dataclass(frozen=True)
class FolderPin:
    """What a folder of runs holds, pinned in ``DIR/<file>`` (``generate.json``, ``evaluation.json``).

    The runner always pins the setting's name and hash and writes ``DIR/setting.json`` once; a rerun
    whose ``pinned`` values disagree with the file is refused (a folder holds one setting and one
    plan); ``info`` is rewritten on every run. When ``admitted`` is given, a folder holding a record
    whose id is not in it is refused too (drawn by other code, a changed plugin or another numpy:
    resuming would silently mix two plans)."""

    file: str
    pinned: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    admitted: frozenset[str] | None = None
    admitted_what: str = "this folder's plan"
    """How a refusal names the set ``admitted`` stands for."""

    def apply(self, store: FileStore, setting: Setting, stored: Sequence[StoredTrajectory]) -> None:
        """Check and write the pin (under the folder's lock, before any run)."""
        pinned = {"setting_name": setting.name, "setting_hash": setting.hash(), **self.pinned}
        path = store.root / self.file
        if path.exists():
            old = read_json_object(path)
            for key, value in pinned.items():
                if old.get(key) != value:
                    raise RunnerError(f"{path}: {key} is {old.get(key)!r} in this folder but {value!r} in this run; "
                                      "use another --out (a folder holds one setting and one plan)")
        if self.admitted is not None:
            foreign = sorted(s.trajectory.header.trajectory_id for s in stored
                             if s.trajectory.header.trajectory_id not in self.admitted)
            if foreign:
                raise RunnerError(f"{store.path_of(foreign[0])}: not an item of {self.admitted_what}; "
                                  f"{len(foreign)} such record(s). They were drawn by other code; move them out "
                                  "or use another --out")
        write_json_atomic(path, {**pinned, **self.info})
        if not (store.root / "setting.json").exists():
            # the device is no part of what a folder holds (runs on several devices may share it)
            write_json_atomic(store.root / "setting.json", setting.model_dump(mode="json", exclude={"runtime"}))


def run_episodes(
    setting: Setting,
    episodes: Sequence[EpisodeSpec],
    out: str | Path,
    cfg: RunnerConfig,
    *,
    pin: FolderPin,
    desc: str | None = None,
) -> RunReport:
    """Run every episode of ``episodes`` that ``out`` does not hold yet; see the module docstring.
    ``pin`` says what the folder holds (checked and written under its lock before anything runs).

    An episode that raises is logged and left out (the next run retries it); the others go on, and
    a :class:`RunnerError` listing the failures ends the run. The folder's ``card.json`` is kept up
    to date after every record."""
    cfg.check()
    ids = [ep.run_id for ep in episodes]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise RunnerError(f"episodes: duplicate run ids {dup[:5]}")
    if Path(out).exists() and not Path(out).is_dir():
        raise RunnerError(f"--out: {out} exists and is not a folder")
    store = FileStore(Path(out))
    with store.lock("run episodes"):
        # Nothing else writes here while we hold the lock: temporaries and partials are dead.
        for tmp in store.stale_temporaries():
            tmp.unlink()
        for pid in store.partial_ids():
            (store.partial / f"{pid}.jsonl").unlink()
        store.partial.mkdir(parents=True, exist_ok=True)
        stored = store.load_all()
        pin.apply(store, setting, stored)
        summaries = {s.trajectory.header.trajectory_id: summarise(s) for s in stored}
        # The folder itself must be one environment (a corpus adopted before is kept); new runs join it.
        try:
            environment = FolderEnvironment.of(store.root, stored, cfg.start_tolerance)
        except ForeignEnvironmentError as e:
            raise RunnerError(str(e)) from None
        environment.adopt_corpus = cfg.adopt_corpus
        todo = [ep for ep in episodes if ep.run_id not in summaries]
        report = RunReport(store.root, len(episodes), len(episodes) - len(todo))
        write_card(store, summaries)
        if not todo:
            return report
        results = (_results_ray if cfg.executor == "ray" else _results_local)(
            cfg, setting.model_dump(mode="json"), todo, str(store.partial)
        )
        t0 = time.perf_counter()
        t_first: float | None = None
        with closing(results), tqdm(total=len(episodes), initial=report.already_done, unit="traj",
                                    desc=desc or setting.name, disable=not cfg.progress, smoothing=0.0,
                                    dynamic_ncols=True) as bar:
            for ep, res in results:
                if isinstance(res, Exception):
                    report.failed.append(f"{ep.run_id}: {type(res).__name__}: {res}")
                    log.error("%s failed (left out; the next run retries it): %s", ep.run_id, res)
                    continue
                traj = Trajectory.model_validate(res["trajectory"])
                meta = RecordMeta(**res["meta"])
                try:
                    environment.admit(traj, meta.provenance)
                except ForeignEnvironmentError as e:
                    raise RunnerError(str(e)) from None
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
                                len(episodes), traj.header.trajectory_id, s.family, s.final_balanced, meta.wall_s,
                                eta / 60)
        report.wall_s = time.perf_counter() - t0
        if not any(store.partial.iterdir()):
            store.partial.rmdir()
    if report.failed:
        raise RunnerError(
            f"{len(report.failed)} episode(s) failed and were left out ({report.generated} finished now); "
            "rerun the same command to retry them:\n  " + "\n  ".join(report.failed)
        )
    return report
