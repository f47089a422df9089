"""The service image, built and run with buildah (no Docker engine on these machines; the README's Deployment section).

Run with ``pytest -m container`` (minutes: a Debian base via debootstrap on first use, then the
image build downloads the service's wheels). Needs root, buildah, debootstrap and the package
mirrors; skipped where they are missing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.service.conftest import feedback_body, free_port, run_body

pytestmark = pytest.mark.container

REPO = Path(__file__).resolve().parents[3]
BASE = "localhost/debian-python:bookworm"
IMAGE = "localhost/mixagent:test"
BUILDAH = ["buildah", "--storage-driver", "vfs"]
HOST_CA = "/etc/ssl/certs/ca-certificates.crt"


def _buildah(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BUILDAH, *args], capture_output=True, text=True, check=check)


def _ensure_base() -> None:
    """A Debian bookworm image with python3 (3.11) and venv, since public images cannot be pulled."""
    if _buildah("inspect", BASE, check=False).returncode == 0:
        return
    with tempfile.TemporaryDirectory(prefix="mixagent-rootfs-") as root:
        subprocess.run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
                        "bookworm", root, "http://deb.debian.org/debian"], check=True, capture_output=True)
        shutil.rmtree(Path(root) / "var/cache/apt/archives", ignore_errors=True)
        ctr = _buildah("from", "scratch").stdout.strip()
        try:
            mnt = _buildah("mount", ctr).stdout.strip()
            subprocess.run(["cp", "-a", f"{root}/.", mnt], check=True)
            _buildah("umount", ctr)
            _buildah("commit", ctr, BASE)
        finally:
            _buildah("rm", ctr, check=False)


@pytest.fixture(scope="module")
def image() -> str:
    if os.geteuid() != 0 or not shutil.which("buildah") or not shutil.which("debootstrap"):
        pytest.skip("needs root, buildah and debootstrap")
    _ensure_base()
    subprocess.run(
        [*BUILDAH, "bud", "--isolation", "chroot", "--network", "host", "--format", "docker",
         "--build-arg", f"BASE_IMAGE={BASE}", "--build-arg", "PIP_CERT=/run/host-ca.crt",
         "-v", f"{HOST_CA}:/run/host-ca.crt:ro", "-t", IMAGE, str(REPO)],
        check=True, capture_output=True, text=True,
    )
    return IMAGE


def test_the_image_is_slim_non_root_and_has_a_healthcheck(image):
    info = json.loads(_buildah("inspect", "--type", "image", image).stdout)
    config = info["Docker"]["config"]
    assert config["User"] == "mixagent"
    assert config["Cmd"] == ["mixagent", "serve"]
    assert "/healthz" in " ".join(config["Healthcheck"]["Test"])
    ctr = _buildah("from", image).stdout.strip()
    try:
        out = _buildah("run", "--isolation", "chroot", ctr, "--", "python3", "-c",
                       "import importlib.util as u, sys; "
                       "print(u.find_spec('torch'), u.find_spec('onnxruntime') is not None)")
        assert out.stdout.split() == ["None", "True"]
        size = _buildah("images", "--format", "{{.Size}}", image).stdout.strip()
        assert size.endswith("MB"), size  # hundreds of MB, not GB
    finally:
        _buildah("rm", ctr, check=False)


def test_the_container_serves_health_and_feedback(image):
    port = free_port()
    ctr = _buildah("from", image).stdout.strip()
    proc = subprocess.Popen(
        [*BUILDAH, "run", "--isolation", "chroot", "--network", "host", "--env", f"MIXAGENT_PORT={port}",
         "--env", "MIXAGENT_TOKENS=container-token", ctr, "--", "mixagent", "serve"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).json() == {"status": "ok"}:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.time() < deadline, "the container did not become healthy"
            time.sleep(0.5)
        assert httpx.get(url + "/readyz").json()["status"] == "ready"
        h = {"Authorization": "Bearer container-token"}
        r = httpx.post(url + "/v1/runs", json=run_body(), headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401
        run = httpx.post(url + "/v1/runs", json=run_body(policy="prior"), headers=h).json()
        d = httpx.post(f"{url}/v1/runs/{run['run_id']}/feedback", json=feedback_body(0), headers=h).json()
        assert d["t"] == 0 and d["weights"] == pytest.approx({"web": 0.6, "code": 0.2, "proofs": 0.2})
        assert "mixagent_decisions_total" in httpx.get(url + "/metrics").text
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        _buildah("rm", ctr, check=False)
