"""Policies by name through the ``mixagent.policies`` entry-point group (agent/registry.py)."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from mixagent.agent import registry
from mixagent.agent.baselines import BASELINES
from mixagent.trajectories import ActionSpec, ContractError, DomainSpace, MixingPolicy
from mixagent.trajectories.policy import PolicyContext
from mixagent.trajectories.schedules import SCHEDULE_FAMILIES

SPACE = DomainSpace.from_fields({"source": ["web", "code"], "target": ["coq"]})
CTX = PolicyContext(SPACE, 6, ActionSpec())


def test_every_builtin_policy_and_family_is_an_entry_point():
    from importlib.metadata import entry_points

    names = {ep.name for ep in entry_points(group=registry.ENTRY_POINT_GROUP)}
    assert names <= set(registry.policy_families())
    assert set(BASELINES) <= names and set(SCHEDULE_FAMILIES) <= names
    assert {"noisy_fixed_target_share", "noisy_loss_softmax", "noisy_loss_softmax_plain"} <= names
    for name in names - set(registry.TRAINER_SIDE_METHODS):  # those act inside the trainer (test_tandem.py)
        policy = registry.build_policy(name, _params(name), CTX)
        assert isinstance(policy, MixingPolicy)
        assert abs(policy.initial_weights(SPACE).as_array().sum() - 1) < 1e-9


def _params(name):
    family = registry.get_family(name)
    return registry.draw_params(name, CTX, 0) if family.draw else {}


def test_a_baseline_class_takes_its_constructor_arguments_as_params():
    p = registry.build_policy("fixed-target-share", {"target_share": 0.3, "level": "field"}, CTX)
    np.testing.assert_allclose(p.initial_weights(SPACE).as_array()[2], 0.3)
    with pytest.raises(ContractError, match=r"\['share'\] are not parameters of 'fixed-target-share'"):
        registry.build_policy("fixed-target-share", {"share": 0.3}, CTX)
    with pytest.raises(ContractError, match="unknown policy or family 'nope'"):
        registry.get_family("nope")


PLUGIN = textwrap.dedent('''
    import numpy as np
    from mixagent.trajectories import Weights
    from mixagent.trajectories.policy import PolicyFamily

    class AllTarget:
        name = "all-target"
        def initial_weights(self, space):
            return Weights.from_raw([1.0 if d.field != "source" else 0.0 for d in space.domains])
        def next_weights(self, space, history):
            return self.initial_weights(space)

    FAMILY = PolicyFamily("third_party_all_target", lambda ctx, p: AllTarget(),
                          lambda ctx, rng, k: {"seed": int(rng.integers(10))})
''')


def test_a_third_party_package_adds_a_family_by_declaring_an_entry_point(tmp_path):
    """A package installed beside mixagent (here: a module plus its dist-info on sys.path) is found
    through its metadata alone: nothing imports it first, nothing registers anything at import."""
    (tmp_path / "thirdparty_mix.py").write_text(PLUGIN)
    dist = tmp_path / "thirdparty_mix-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-mix\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[mixagent.policies]\nthird_party_all_target = thirdparty_mix:FAMILY\n"
    )
    code = textwrap.dedent('''
        import sys
        from mixagent.agent.registry import build_policy, draw_params, policy_families
        from mixagent.trajectories import ActionSpec, DomainSpace
        from mixagent.trajectories.policy import PolicyContext
        assert "thirdparty_mix" not in sys.modules
        space = DomainSpace.from_fields({"source": ["a"], "target": ["b"]})
        ctx = PolicyContext(space, 4, ActionSpec())
        assert "third_party_all_target" in policy_families()
        p = build_policy("third_party_all_target", draw_params("third_party_all_target", ctx, 1), ctx)
        print(round(p.initial_weights(space).as_array()[1], 3))
    ''')
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1.0"


def test_the_learners_errors_form_one_tree():
    """Everything mixagent.agent refuses is an AgentError, and still the ValueError or RuntimeError
    callers caught before the tree existed."""
    from mixagent.agent import errors
    from mixagent.trajectories.contract import ContractError

    for name in errors.__all__[1:]:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.AgentError), name
        assert issubclass(cls, ContractError) or issubclass(cls, RuntimeError), name
    from mixagent.agent.card import ArtifactError
    from mixagent.agent.dataset import DatasetError
    from mixagent.agent.registry import RegistryError
    from mixagent.agent.runner import RunnerError

    assert (ArtifactError, DatasetError, RegistryError, RunnerError) == (
        errors.ArtifactError, errors.DatasetError, errors.RegistryError, errors.RunnerError)
    with pytest.raises(errors.AgentError, match="unknown policy or family 'nope'"):
        from mixagent.agent.registry import get_family

        get_family("nope")
