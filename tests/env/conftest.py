"""From a plain checkout (``PYTHONPATH=.``, nothing installed) ``mixagent`` is only ``./mixagent``: its
parts are top-level folders that setuptools maps into the namespace (pyproject ``package-dir``). This
finder maps them the same way, last in line, so an install's own mapping always wins and
``PYTHONPATH=. python -m pytest -m cuda tests/env/test_cuda.py`` imports the checkout's code."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PARTS = {"mixagent.trajectories": "trajectories", "mixagent.env": "env", "mixagent.agent": "agent",
         "mixagent.service": "service", "mixagent.configs": "configs"}


class CheckoutParts(importlib.abc.MetaPathFinder):
    """``mixagent.<part>`` -> ``<part>/`` of this checkout, when no installed mapping found it."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        folder = PARTS.get(name)
        if folder is None:
            return None
        return importlib.util.spec_from_file_location(name, REPO / folder / "__init__.py",
                                                      submodule_search_locations=[str(REPO / folder)])


if not any(isinstance(f, CheckoutParts) for f in sys.meta_path):
    sys.meta_path.append(CheckoutParts())
