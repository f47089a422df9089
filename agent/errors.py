"""The learner's errors: one tree, so a caller catches ``AgentError`` for anything ``mixagent.agent``
refuses, and every message names the file, field or value it is about.

```
AgentError
 ├── RegistryError         (ContractError)  an unknown policy or family name; an entry point that does not load
 ├── ArtifactError         (ContractError)  a policy artifact that cannot be served (card, network, probe)
 ├── DatasetError          (ContractError)  training data that cannot be used as asked (folders, split, selection)
 ├── ExportError           (RuntimeError)   a network that does not export, or whose ONNX disagrees with torch
 └── RunnerError           (RuntimeError)   episodes that cannot start or go on: a folder of another setting or
                                            plan, a foreign environment, failed episodes (generation and evaluation)
```

The second base keeps what callers already catch working: a contract violation is a ``ValueError``
(:class:`~mixagent.trajectories.contract.ContractError`), a run that cannot go on a ``RuntimeError``.
Imports nothing heavy (the server loads ``ArtifactError`` through ``agent/card.py``).
"""

from __future__ import annotations

from mixagent.trajectories.contract import ContractError

__all__ = ["AgentError", "RegistryError", "ArtifactError", "DatasetError", "ExportError", "RunnerError"]


class AgentError(Exception):
    """Anything ``mixagent.agent`` refuses; the message names the file, field or value."""


class RegistryError(AgentError, ContractError):
    """An unknown policy name, or an entry point that does not load into a family."""


class ArtifactError(AgentError, ContractError):
    """A policy artifact that cannot be served; the message names the file and the problem."""


class DatasetError(AgentError, ContractError):
    """Training data that cannot be used as asked; the message names the folder or field."""


class ExportError(AgentError, RuntimeError):
    """The trained network could not be exported, or its ONNX form disagrees with it."""


class RunnerError(AgentError, RuntimeError):
    """Episodes cannot start or go on (the message says why and names the file)."""
