"""A real ``mixagent serve`` process (uvicorn, one or more workers) for tests that need replicas."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.service.conftest import ADMIN, TOKEN, auth, free_port, run_body

STARTUP_S = 90


class Replica:
    def __init__(self, name: str, database_url: str, policy_dir: Path, logs: Path, *, workers: int = 1,
                 env: dict[str, str] | None = None):
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "MIXAGENT_DATABASE_URL": database_url, "MIXAGENT_TOKENS": TOKEN,
               "MIXAGENT_ADMIN_TOKENS": ADMIN, "MIXAGENT_POLICY_DIR": str(policy_dir),
               "MIXAGENT_PORT": str(self.port), "MIXAGENT_HOST": "127.0.0.1", "MIXAGENT_LOG_LEVEL": "warning",
               **(env or {})}
        self.log = logs / f"{name}.log"
        mixagent = Path(sys.executable).with_name("mixagent")
        self.proc = subprocess.Popen([str(mixagent), "serve", "--workers", str(workers)], env=env,
                                     stdout=self.log.open("wb"), stderr=subprocess.STDOUT)
        self.http = httpx.Client(base_url=self.url, timeout=30)

    def wait(self) -> None:
        deadline = time.time() + STARTUP_S
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"replica {self.name} exited: {self.log.read_text()}")
            try:
                if self.http.get("/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"replica {self.name} did not start in {STARTUP_S} s: {self.log.read_text()}")

    def stop(self) -> None:
        self.http.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def load(self, path: str) -> httpx.Response:
        return self.http.post("/v1/policies/load", json={"path": path}, headers=auth(ADMIN))

    def run(self, **over) -> httpx.Response:  # type: ignore[no-untyped-def]
        return self.http.post("/v1/runs", json=run_body(policy="tuned-share", **over), headers=auth())

    def current(self) -> dict[str, str]:
        data = self.http.get("/v1/policies", headers=auth()).json()["data"]
        return {p["name"]: p["version"] for p in data if p["current"]}
