"""Every field a user sets (settings, training, generation and evaluation configs, the policy card)
carries a docstring right under it, so that the setting files and ``--config`` YAMLs are explained
where they are defined. Read from the source (``ast``), so a new undocumented field fails here."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import mixagent.agent.card as card
import mixagent.agent.catalogue as catalogue
import mixagent.agent.generate as generate
import mixagent.agent.runner as runner
import mixagent.env.setting as setting
import mixagent.trajectories.contract as contract

CLASSES = {
    setting: [name for name, obj in vars(setting).items()
              if inspect.isclass(obj) and obj.__module__ == setting.__name__
              and name.endswith(("Spec", "Source", "Setting")) and name != "_Spec"],
    contract: ["Objective", "ObjectiveRange", "ActionSpec"],
    runner: ["RunnerConfig"],
    generate: ["GenerateConfig"],
    catalogue: ["EvaluationConfig"],
    card: ["PolicyCard", "TrainingData", "WarmStart"],
}


def undocumented(module: object, class_name: str) -> list[str]:
    tree = ast.parse(Path(inspect.getfile(module)).read_text())  # type: ignore[arg-type]
    [cls] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name]
    body = cls.body
    missing = []
    for i, node in enumerate(body):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            nxt = body[i + 1] if i + 1 < len(body) else None
            documented = (isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                          and isinstance(nxt.value.value, str) and nxt.value.value.strip())
            if not documented:
                missing.append(node.target.id)
    return missing


@pytest.mark.parametrize(("module", "class_name"), [(m, c) for m, names in CLASSES.items() for c in names],
                         ids=lambda x: x if isinstance(x, str) else x.__name__.rsplit(".", 1)[-1])
def test_every_field_has_a_docstring(module, class_name):
    assert undocumented(module, class_name) == [], f"{module.__name__}.{class_name}"


def test_the_check_finds_an_undocumented_field(tmp_path, monkeypatch):
    src = tmp_path / "fake.py"
    src.write_text('class A:\n    x: int = 1\n    """documented"""\n    y: int = 2\n    z: int = 3\n    """ok"""\n')

    class Fake:
        pass

    monkeypatch.setattr(inspect, "getfile", lambda m: str(src))
    assert undocumented(Fake, "A") == ["y"]


def test_training_config_too():
    pytest.importorskip("d3rlpy")
    import mixagent.agent.train as train

    assert undocumented(train, "TrainConfig") == []
