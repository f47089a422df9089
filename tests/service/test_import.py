"""Serving needs no torch: importing the app (and the client) must not pull in training code."""

import subprocess
import sys


def test_service_imports_without_training_stack():
    code = (
        "import sys, mixagent.service.main, mixagent.service.client, mixagent.service.cli;"
        "heavy = sorted(m for m in ('torch', 'transformers', 'd3rlpy', 'gymnasium') if m in sys.modules);"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
