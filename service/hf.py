"""Deprecated: moved to :mod:`mixagent.service.trainer.hf` (this alias goes away in the next release)."""

from mixagent.service._moved import alias

alias(__name__, "mixagent.service.trainer.hf")
