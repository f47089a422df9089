"""The two rooms of ``service/`` keep their promises, checked in a fresh interpreter each:

* every module of the server imports neither torch, transformers, d3rlpy, gymnasium, ``mixagent.env``
  nor the trainer room (serving stays a slim CPU install);
* the trainer's HTTP client and the package's import surface need neither torch nor transformers;
* the old flat module paths still work, as aliases that warn.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "d3rlpy", "gymnasium", "mixagent.env")


def _loaded_after(code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter; the forbidden modules it left in ``sys.modules``."""
    probe = (f"{code}\nimport sys, json; print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
             f"{HEAVY!r} or m in {HEAVY!r} or m.startswith('mixagent.env.') "
             "or m.startswith('mixagent.service.trainer'))))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_server_imports_no_training_code_and_not_the_trainer_room():
    code = (
        "import importlib, pkgutil, mixagent.service.server as pkg\n"
        "for m in pkgutil.iter_modules(pkg.__path__): importlib.import_module(f'{pkg.__name__}.{m.name}')\n"
        "from mixagent.service.server.main import create_app\n"
        "import mixagent.service\n"
    )
    assert _loaded_after(code) == []


def test_the_commands_import_no_web_stack_until_they_run():
    """``mixagent --help`` and the other commands work on a core install (no service extra)."""
    code = ("import sys, mixagent.service.cli\n"
            "print(sorted(m for m in ('fastapi', 'sqlalchemy', 'uvicorn', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_app_factory_builds_without_training_code(tmp_path):
    code = (
        "from mixagent.service.server.config import Settings\n"
        "from mixagent.service.server.main import create_app\n"
        f"create_app(Settings(database_url='sqlite:///{tmp_path}/x.db', tokens='t'))\n"
    )
    assert _loaded_after(code) == []


def test_the_trainer_client_and_surface_need_neither_torch_nor_transformers():
    loaded = _loaded_after("import mixagent.service.trainer.client\n"
                           "from mixagent.service.trainer import MixingClient, MixingRun, StepConflict, DomainSpace, "
                           "Feedback, field_scores\n"
                           "from mixagent.service import MixingClient as C, Feedback as F\n")
    assert [m for m in loaded if not m.startswith("mixagent.service.trainer")] == []


def test_one_import_surface_for_the_trainer_side():
    """Everything a training loop needs comes from ``mixagent.service.trainer`` (the client, the contract
    types it builds, the field score, the sampler, the Hugging Face integration); ``mixagent.service``
    forwards exactly those names, the same objects, and imports the trainer room only when asked."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import mixagent.service as service
    import mixagent.service.trainer as trainer
    from mixagent.service.trainer.client import MixingClient
    from mixagent.trajectories.contract import DomainSpace, Feedback

    assert set(trainer.__all__) == service.TRAINER_NAMES
    for name in trainer.__all__:
        assert getattr(service, name) is getattr(trainer, name), name
    assert (trainer.MixingClient, trainer.DomainSpace, trainer.Feedback) == (MixingClient, DomainSpace, Feedback)
    assert {"MixingClient", "LiveWeightSampler", "MixagentCallback", "field_score_metrics"} <= set(dir(service))
    with pytest.raises(AttributeError, match="no attribute 'server_app'"):
        service.server_app  # noqa: B018


def test_the_trainer_surface_names_resolve_lazily():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import mixagent.service.trainer as trainer
    from mixagent.service.trainer.client import MixingClient
    from mixagent.service.trainer.hf import MixagentCallback
    from mixagent.service.trainer.sampler import LiveWeightSampler

    assert (trainer.MixingClient, trainer.LiveWeightSampler, trainer.MixagentCallback) == (
        MixingClient, LiveWeightSampler, MixagentCallback)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        trainer.nothing  # noqa: B018


@pytest.mark.parametrize(("module", "missing"), [("mixagent.service.trainer.sampler", "torch"),
                                                 ("mixagent.service.trainer.hf", "torch"),
                                                 ("mixagent.service.trainer.hf", "transformers")])
def test_the_torch_parts_of_the_trainer_side_name_the_extra_to_install(module, missing):
    code = (f"import sys; sys.modules[{missing!r}] = None\n"
            f"try:\n    import {module}\nexcept ModuleNotFoundError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert f"{module} needs the train extra ({missing} is not installed): pip install 'mixagent[train]'" in out, out
