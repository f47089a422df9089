"""Old flat module paths of ``mixagent.service`` (before the server/trainer split), kept for one
release: each old module is an alias of its new home and warns with a DeprecationWarning."""

from __future__ import annotations

import importlib
import sys
import warnings

__all__ = ["alias"]


def alias(old: str, new: str) -> None:
    """Make module ``old`` the module ``new`` (the same objects, so ``isinstance`` and monkeypatching
    agree) and warn the code that imported ``old`` that it goes away."""
    module = importlib.import_module(new)
    # 1: here, 2: the old module's body, 3: its importer (warnings skips the import machinery)
    warnings.warn(f"{old} moved to {new}; the old path goes away in the next release",
                  DeprecationWarning, stacklevel=3)
    sys.modules[old] = module
