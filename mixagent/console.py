"""Terminal output shared by every CLI: logging set-up and rich consoles that never cut tables.

rich sizes a console to the terminal, and to 80 columns when output is piped (``nohup … > log``),
which folds or truncates wide tables. :func:`console` returns a console that keeps the terminal's
width on a terminal and writes full lines (up to :data:`PIPE_WIDTH` columns) otherwise. Imports
nothing of mixagent, so every floor may use it.
"""

from __future__ import annotations

import logging
import sys

from rich.console import Console

__all__ = ["PIPE_WIDTH", "console", "configure_logging"]

PIPE_WIDTH = 250
"""Columns of a console that does not write to a terminal (no folding of tables in log files)."""


def console(stderr: bool = False) -> Console:
    """A rich console on stdout (or stderr) that does not cut lines when piped."""
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else PIPE_WIDTH
    return Console(stderr=stderr, width=width, soft_wrap=width is not None)


def configure_logging(verbose: bool) -> None:
    """Plain messages on stderr: INFO and up with ``verbose``, WARNING and up otherwise."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")
