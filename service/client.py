"""Deprecated: moved to :mod:`mixagent.service.trainer.client` (this alias goes away in the next release)."""

from mixagent.service._moved import alias

alias(__name__, "mixagent.service.trainer.client")
