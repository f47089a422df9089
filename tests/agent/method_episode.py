"""One episode of a trainer-side method in the env, shared by the TANDEM and Aioli tests."""

from __future__ import annotations

from typing import Any


def run_method_episode(env: Any, method: Any, seed: int) -> tuple[Any, list[dict[str, Any]]]:
    """Reset ``env`` with ``seed`` and step ``method`` to the horizon: the history and each stage's log."""
    env.reset(seed=seed)
    logs, truncated = [], False
    while not truncated:
        *_, truncated, info = env.step_method(method)
        logs.append(info["method"])
    return env.history, logs
