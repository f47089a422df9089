"""The trainer-side integration pages (docs/loop-sampler.md, hf-trainer.md, datasets-mixture.md,
litdata-mixture.md, distributed.md) each open with a runnable example: run it, as written, against
a real service on loopback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.service.conftest import TOKEN

ROOT = Path(__file__).resolve().parents[3]
PAGES = ["loop-sampler.md", "hf-trainer.md", "datasets-mixture.md", "litdata-mixture.md", "distributed.md"]


def example_of(page: str) -> str:
    """The page's first ``python`` code block."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / page).read_text(), flags=re.S)
    assert blocks, f"docs/{page} has no python example"
    return str(blocks[0])


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_the_pages_example_runs_against_a_real_service(server, tmp_path, page):
    pytest.importorskip("torch")
    (tmp_path / "example.py").write_text(example_of(page))
    env = {**os.environ, "MIXAGENT_URL": server.url, "MIXAGENT_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trained on" in done.stdout, done.stdout
