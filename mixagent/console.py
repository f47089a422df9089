"""Terminal output shared by every CLI: logging set-up and rich consoles that never cut tables.

rich sizes a console to the terminal, and to 80 columns when output is piped (``nohup … > log``),
which folds or truncates wide tables. :func:`console` returns a console that keeps the terminal's
width on a terminal and writes full lines (up to :data:`PIPE_WIDTH` columns) otherwise;
:func:`typer_width` applies the same rule to typer's own help and usage-error panels.

:func:`missing_extra` turns a ``ModuleNotFoundError`` of an optional dependency into the one line
that says which extra to install (read from the installed package's metadata), and
:func:`fail` is how every command ends with an error. Imports nothing of mixagent, so every floor may
use it.
"""

from __future__ import annotations

import logging
import re
import sys
from functools import cache
from importlib.metadata import PackageNotFoundError, requires
from typing import NoReturn

import typer
from rich.console import Console

__all__ = ["PIPE_WIDTH", "console", "fail", "typer_width", "configure_logging", "extra_of", "missing_extra"]

PIPE_WIDTH = 250
"""Columns of a console that does not write to a terminal (no folding of tables in log files)."""


def console(stderr: bool = False) -> Console:
    """A rich console on stdout (or stderr) that does not cut lines when piped."""
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else PIPE_WIDTH
    return Console(stderr=stderr, width=width, soft_wrap=width is not None)


def fail(message: str, code: int = 1) -> NoReturn:
    """End a command with ``message`` on stderr, one line in red (never read as rich markup), and exit
    status ``code``: 2 for a usage error (a bad option or setting), 1 for a failure of the work itself."""
    console(stderr=True).print(message, style="red", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def typer_width() -> int | None:
    """The width for typer's rich panels (help, usage errors): :data:`PIPE_WIDTH` when neither stdout
    nor stderr is a terminal, else ``None`` (rich finds the terminal's width). typer has one width
    for both streams, so a terminal on either keeps its size (no 250-column box on a screen)."""
    return None if sys.stdout.isatty() or sys.stderr.isatty() else PIPE_WIDTH


def configure_logging(verbose: bool) -> None:
    """Plain messages on stderr: INFO and up with ``verbose``, WARNING and up otherwise."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")


_TRANSITIVE = {"scipy": "train", "structlog": "train", "sklearn": "train", "starlette": "service"}
"""Modules the code imports that an extra brings in only through another requirement (d3rlpy, FastAPI)."""


@cache
def _extras() -> dict[str, str]:
    """Top-level import name -> extra, from the ``Requires-Dist`` lines of the installed metadata
    (``torch==2.13.0; extra == "train"``); empty when mixagent is not installed (a bare source tree)."""
    try:
        lines = requires("mixagent") or []
    except PackageNotFoundError:
        return {}
    found = dict(_TRANSITIVE)
    for line in lines:
        extra = re.search(r"""extra\s*==\s*["']([^"']+)["']""", line)
        name = re.match(r"[A-Za-z0-9._-]+", line)
        if extra and name and name.group(0).lower() != "mixagent":
            found.setdefault(re.sub(r"[-.]", "_", name.group(0).lower()), extra.group(1))
    return found


def extra_of(module: str) -> str | None:
    """The extra of mixagent that installs ``module`` (its top-level package), or ``None``."""
    return _extras().get(module.split(".")[0])


def missing_extra(error: ModuleNotFoundError, what: str = "this command") -> str | None:
    """One line saying what to install when ``error`` is about a module of an extra, else ``None``
    (a missing module that no extra provides is a bug, and keeps its traceback)."""
    name = (error.name or "").split(".")[0]
    extra = extra_of(name) if name else None
    if extra is None:
        return None
    return f"{what} needs the {extra} extra ({name} is not installed): pip install 'mixagent[{extra}]'"
