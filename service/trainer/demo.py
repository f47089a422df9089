"""``mixagent demo``: a short real continual pre-training with the service in the loop.

The service runs in this process on a loopback port (uvicorn in a thread, an SQLite file in the
output folder); the trainer side is a :class:`~mixagent.env.mixing_env.DataMixingEnv` episode that
talks to it through :class:`~mixagent.service.trainer.client.MixingClient` over HTTP, exactly as a remote
trainer would. The same episode (same seed, same batches order) is then trained on a uniform
mixture, and the per-field scores of both are printed side by side.

The policy is the service's default unless ``policy`` names another (the bundled agent once one
ships, else ``uniform``: :attr:`~mixagent.service.server.registry.PolicyRegistry.default_name`).
Each stage prints one line (decision, target share, who served it, seconds), so minutes of training
are never silent.

Outputs in ``out``: ``demo.png`` (the comparison: target share per stage, field scores, balanced
score, per-domain loss change, served vs uniform), ``served.png`` (the served run alone: domain
weights per stage, field scores, per-domain loss change), ``served.jsonl`` (the served run exported as a trajectory),
``demo.json`` (the numbers printed) and ``demo.db`` (the service's SQLite database, with its
``-wal``/``-shm`` files while it is open).
"""

from __future__ import annotations

import json
import secrets
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np

from mixagent.service.server.config import Settings
from mixagent.service.server.export import export_trajectories, write_jsonl
from mixagent.service.server.main import create_app
from mixagent.service.server.registry import PolicyRegistry, bundled_dir
from mixagent.service.trainer.client import MixingClient
from mixagent.trajectories.contract import ContractError, Feedback, History, Weights

__all__ = ["BackgroundServer", "DemoError", "free_port", "run_demo"]


class DemoError(Exception):
    """A demo that cannot start: the message says what to change (``mixagent demo`` prints it as
    one line)."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BackgroundServer:
    """Serve an ASGI app with uvicorn on a loopback port, in a daemon thread (a context manager)."""

    def __init__(self, app: Any, port: int | None = None):
        import uvicorn  # noqa: PLC0415

        from mixagent.service.server.limits import uvicorn_limits  # noqa: PLC0415

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    **uvicorn_limits()))
        self.thread = threading.Thread(target=self.server.run, name="mixagent-server", daemon=True)

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the mixing service did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def _episode(env: Any, seed: int, choose: Callable[[Feedback], Weights | list[float]],
             progress: Callable[[int, list[float]], None] = lambda t, w: None) -> History:
    """One episode; ``choose`` gets each feedback (the step-0 evaluation first) and returns the
    mixture for the next stage; ``progress(t, weights)`` is called after each decision."""
    def ask(info: dict[str, Any]) -> list[float]:
        w = choose(Feedback.model_validate(info["feedback"]))
        return list(w.values) if isinstance(w, Weights) else list(w)

    _, info = env.reset(seed=seed)
    weights = ask(info)
    progress(0, weights)
    for t in range(1, env.horizon + 1):
        _, _, _, truncated, info = env.step_weights(np.asarray(weights))
        weights = ask(info)
        progress(t, weights)
        if truncated:
            break
    return cast(History, env.history)  # the env is built lazily (torch); its history is a History


def _progress(label: str, env: Any, echo: Callable[[str], None],
              served_by: Callable[[], str] = lambda: "") -> Callable[[int, list[float]], None]:
    """One line per evaluation: which, the target share decided, who served it, seconds so far."""
    target = np.asarray([d.field != "source" for d in env.space.domains])
    t0 = time.time()

    def show(t: int, weights: list[float]) -> None:
        share = float(np.asarray(weights)[target].sum())
        what = "start evaluated" if t == 0 else f"stage {t}/{env.horizon} trained and evaluated"
        echo(f"  {label}: {what}; next target share {share:.2f}{served_by()} ({time.time() - t0:.0f} s)")

    return show


def run_demo(
    *, setting: str, policy: str | None = None, out: Path, seed: int = 0, cache_dir: Path | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    try:
        from mixagent.env.mixing_env import DataMixingEnv  # noqa: PLC0415 - torch only here
        from mixagent.env.setting import SettingError, load_setting  # noqa: PLC0415
        from mixagent.trajectories.encoding import balanced_scores  # noqa: PLC0415
        from mixagent.trajectories.plots import plot_comparison, plot_history  # noqa: PLC0415
    except ModuleNotFoundError as e:
        raise DemoError(f"needs the train extra ({e.name} is not installed): pip install 'mixagent[all]'") from None

    try:  # first: a bad setting writes nothing (no --out folder, no demo.db)
        the_setting = load_setting(setting)
    except SettingError as e:
        raise DemoError(f"--setting: {e}") from None
    registry = PolicyRegistry()  # the built-ins and the bundle, as the demo's service will have them
    registry.load_dir(bundled_dir(), bundled=True)
    by_default = policy is None
    policy = policy or registry.default_name
    try:  # before minutes of loading: an unknown policy is one line now, not a traceback later
        registry.get(policy)
    except ContractError as e:
        raise DemoError(f"--policy: {str(e).removeprefix('policy: ')}") from None
    out.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    db = out / "demo.db"
    db.unlink(missing_ok=True)
    app = create_app(Settings(database_url=f"sqlite:///{db}", tokens=token))
    echo(f"policy: {policy}" + (" (the service's default)" if by_default else ""))
    echo(f"loading setting {the_setting.name} (corpus, tokenizer and base model are built and cached on first use)")
    env = DataMixingEnv(the_setting, cache_dir=cache_dir, progress=True)
    s = env.setting
    with BackgroundServer(app) as server, MixingClient(server.url, token) as client:
        echo(f"mixing service on {server.url}; policy {policy}; {env.horizon} decisions x {s.cpt.interval} steps")
        run = client.start_run(env.space, horizon=env.horizon, interval=s.cpt.interval, policy=policy,
                               setting_name=s.name, model=env.model_description, seed=seed,
                               objective=s.objective.model_dump())

        fallbacks: list[str] = []

        def ask_service(fb: Feedback) -> list[float]:
            run.report(fb)
            sb = run.served_by or {}
            if sb.get("fallback"):
                fallbacks.append(f"{sb['fallback']} ({sb.get('reason')})")
            return run.weights_array()

        def who() -> str:
            sb = run.served_by or {}
            return f", by {sb['fallback']} (fallback)" if sb.get("fallback") else f", by {sb.get('policy', policy)}"

        echo(f"1/2 served run ({policy}@{run.policy_version}), {env.horizon} stages:")
        t0 = time.time()
        served = _episode(env, seed, ask_service, _progress("served", env, echo, who))
        served_s = time.time() - t0
        run.close()  # every feedback delivered before the export
        n = write_jsonl(export_trajectories(app.state.store), out / "served.jsonl")
    uniform_w = [1.0 / env.space.size] * env.space.size
    echo(f"2/2 the same episode on a uniform mixture, {env.horizon} stages:")
    t0 = time.time()
    uniform = _episode(env, seed, lambda fb: uniform_w, _progress("uniform", env, echo))
    uniform_s = time.time() - t0

    fields = env.space.fields
    s_served, s_uniform = served.field_scores(), uniform.field_scores()
    b_served = balanced_scores(served, s.objective)
    b_uniform = balanced_scores(uniform, s.objective)
    echo("")
    echo(f"per-field score (mean log-likelihood of held-out text, nats/token; higher is better) after "
         f"{served.feedback[-1].step} steps")
    echo(f"{'field':<12}{'start':>10}{'uniform':>10}{policy:>22}")
    for j, f in enumerate(fields):
        echo(f"{f:<12}{s_served[0, j]:>10.4f}{s_uniform[-1, j]:>10.4f}{s_served[-1, j]:>22.4f}")
    echo(f"{'balanced B':<12}{0.0:>10.4f}{b_uniform[-1]:>10.4f}{b_served[-1]:>22.4f}")
    fm = env.space.field_matrix()
    shares = np.array([fm @ w.as_array() for w in served.weights])
    echo("served field shares per stage: " + "; ".join(
        f"t{t}: " + ", ".join(f"{f}={x:.2f}" for f, x in zip(fields, row, strict=True))
        for t, row in enumerate(shares)))
    plot_comparison({f"served by {policy}": served, "uniform mixture": uniform}, out / "demo.png",
                    objective=s.objective, title=f"{s.name}: the same episode, served by {policy} vs a uniform mixture")
    plot_history(served, out / "served.png", title=f"{s.name}: served by {policy}")
    if fallbacks:
        echo(f"{len(fallbacks)} of {len(served.feedback)} decisions were served by the fallback: {fallbacks[0]}")
    result = {
        "setting": s.name, "policy": policy, "policy_version": run.policy_version, "seed": seed,
        "steps": served.feedback[-1].step, "fallback_decisions": len(fallbacks),
        "fields": list(fields),
        "start": s_served[0].tolist(), "uniform_final": s_uniform[-1].tolist(), "served_final": s_served[-1].tolist(),
        "balanced_uniform": float(b_uniform[-1]), "balanced_served": float(b_served[-1]),
        "served_field_shares": shares.tolist(),
        "wall_s": {"served": round(served_s, 1), "uniform": round(uniform_s, 1)},
        "exported_trajectories": n,
    }
    (out / "demo.json").write_text(json.dumps(result, indent=2) + "\n")
    echo(f"wrote {out / 'demo.png'} (served vs uniform), {out / 'served.png'} (the served run's mixtures and "
         f"losses), {out / 'served.jsonl'}, {out / 'demo.json'} and the service's database {db}")
    return result
