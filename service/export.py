"""Deprecated: moved to :mod:`mixagent.service.server.export` (this alias goes away in the next release)."""

from mixagent.service._moved import alias

alias(__name__, "mixagent.service.server.export")
