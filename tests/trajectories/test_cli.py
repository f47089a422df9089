import gzip
import shutil
from pathlib import Path

from typer.testing import CliRunner

from mixagent.cli import app

runner = CliRunner()


def test_validate_passes_a_good_dataset(tiny_dataset):
    r = runner.invoke(app, ["trajectories", "validate", str(tiny_dataset)])
    assert r.exit_code == 0, r.output
    assert "9 valid record(s), 0 problem(s)" in r.output


def test_validate_names_every_bad_file_and_fails(tiny_dataset, tmp_path):
    out = tmp_path / "broken"
    shutil.copytree(tiny_dataset, out)
    files = sorted((out / "records").glob("*.jsonl.gz"))
    files[0].write_bytes(files[0].read_bytes()[:100])  # truncated
    lines = gzip.decompress(files[1].read_bytes()).decode().replace('"schema_version":1', '"schema_version":7')
    files[1].write_bytes(gzip.compress(lines.encode()))  # foreign version
    (out / "partial").mkdir(exist_ok=True)
    (out / "partial" / "cycle-000000000000.jsonl").write_text("{}\n")
    r = runner.invoke(app, ["trajectories", "validate", str(out)])
    assert r.exit_code == 1
    assert f"{files[0]}: truncated" in r.output.replace("\n", "")
    assert "schema_version 7 is not supported" in r.output
    assert "in progress (not accepted)" in r.output
    assert "7 valid record(s)" in r.output


def test_stats_prints_the_family_table_and_writes_plots(tiny_dataset, tmp_path):
    r = runner.invoke(app, ["trajectories", "stats", str(tiny_dataset), "--plots", str(tmp_path / "plots")],
                      terminal_width=200)
    assert r.exit_code == 0, r.output
    for fam in ("constant", "ramp_down", "switch_target_first", "all"):
        assert fam in r.output
    # the columns have a legend, and dirichlet's low target share its reason
    text = " ".join(r.output.split())
    assert "T: stages (decisions) per trajectory" in text and "s/traj: wall seconds per trajectory" in text
    assert "tgt share: mean share of the target field(s)" in text
    assert "dirichlet: each stage draws its mixture from Dirichlet(α·n·prior), whose mean is the prior" in text
    for name in ("weight_schedules.png", "field_scores.png", "final_scores.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 1000
    assert not (tmp_path / "plots" / "domain_weights.png").exists()  # field-level data: no K-dimensional view


def test_stats_of_domain_level_data_draws_each_familys_domain_weights(tmp_path):
    folder = Path(__file__).resolve().parents[2] / "data" / "trajectories" / "math-tiny-domain"
    r = runner.invoke(app, ["trajectories", "stats", str(folder), "--plots", str(tmp_path)], terminal_width=200)
    assert r.exit_code == 0, r.output
    for fam in ("dirichlet_ramp", "noisy_loss_softmax", "logit_walk"):
        assert fam in r.output
    assert (tmp_path / "domain_weights.png").stat().st_size > 10_000


def test_generate_rejects_a_bad_setting_naming_file_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ncorpus: {domains: {a: {kind: files, root: .}}}\n"
                   "fields: {source: [a]}\ncpt: {horizon: 0}\n")
    r = runner.invoke(app, ["trajectories", "generate", "--setting", str(bad), "--n", "1",
                            "--out", str(tmp_path / "o")])
    assert r.exit_code == 2
    assert str(bad) in r.output and "cpt.horizon" in r.output
    assert not (tmp_path / "o").exists()


def test_import_adds_exported_runs_and_validate_accepts_them(tmp_path):
    from mixagent.trajectories import History

    from .conftest import make_trajectory

    live = make_trajectory(seed=1, trajectory_id="served-bbbbbbbbbbbb")
    h = live.history  # a run in progress: its last weights have no feedback yet
    live = live.model_copy(update={"history": History(space=h.space, feedback=h.feedback[:3], weights=h.weights[:3]),
                                   "stage_wall_s": live.stage_wall_s[:2]})
    export = tmp_path / "runs.jsonl"
    export.write_text(make_trajectory(trajectory_id="served-aaaaaaaaaaaa").model_dump_json() + "\n"
                      + live.model_dump_json() + "\n")
    r = runner.invoke(app, ["trajectories", "import", str(export), "--out", str(tmp_path / "ds")])
    assert r.exit_code == 0, r.output
    assert "left out (not finished)" in r.output and "served-bbbbbbbbbbbb is in progress" in r.output
    assert "1 imported, 0 already there, 1 unfinished left out; 1 in all" in r.output
    r = runner.invoke(app, ["trajectories", "validate", str(tmp_path / "ds")])
    assert r.exit_code == 0 and "1 valid record(s), 0 problem(s)" in r.output


def test_import_refuses_runs_of_another_setting_and_a_locked_folder(tiny_dataset, tmp_path):
    import fcntl

    from .conftest import make_trajectory

    out = tmp_path / "ds"
    shutil.copytree(tiny_dataset, out)
    export = tmp_path / "runs.jsonl"
    export.write_text(make_trajectory(trajectory_id="served-aaaaaaaaaaaa").model_dump_json() + "\n")
    r = runner.invoke(app, ["trajectories", "import", str(export), "--out", str(out)])
    assert r.exit_code == 1 and "is not the setting" in r.output and "line 1" in r.output
    with open(out / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        r = runner.invoke(app, ["trajectories", "import", str(export), "--out", str(out)])
        assert r.exit_code == 1 and "another writer" in " ".join(r.output.split())
        r = runner.invoke(app, ["trajectories", "stats", str(out), "--no-plots", "--write-card"])
        assert r.exit_code == 1 and "another writer" in " ".join(r.output.split())
    assert runner.invoke(app, ["trajectories", "validate", str(out)]).exit_code == 0  # nothing was written


def test_import_into_a_generated_folder_admits_only_runs_of_its_environment(tiny_dataset, tmp_path):
    """A served run from another base model would make the folder refuse to grow: refused up front."""
    from mixagent.trajectories.storage import FileStore

    from .test_environment import moved

    out = tmp_path / "ds"
    shutil.copytree(tiny_dataset, out)
    run = FileStore(out).load_all()[0].trajectory
    run = run.model_copy(update={"header": run.header.model_copy(update={"trajectory_id": "served-aaaaaaaaaaaa"})})
    export = tmp_path / "runs.jsonl"
    export.write_text(moved(run, 0.5).model_dump_json() + "\n")
    r = runner.invoke(app, ["trajectories", "import", str(export), "--out", str(out)])
    text = " ".join(r.output.split())
    assert r.exit_code == 1 and "served-aaaaaaaaaaaa starts from another evaluation" in text and "0.5" in text
    assert len(FileStore(out).list()) == 9
    export.write_text(moved(run, 0.001).model_dump_json() + "\n")  # other numerics: joins, as unrecorded
    r = runner.invoke(app, ["trajectories", "import", str(export), "--out", str(out)])
    assert r.exit_code == 0 and "1 imported" in r.output
    assert FileStore(out).read("served-aaaaaaaaaaaa").meta.provenance == {}


def test_validate_reports_broken_folder_files_instead_of_crashing(tiny_dataset, tmp_path):
    out = tmp_path / "broken"
    shutil.copytree(tiny_dataset, out)
    (out / "card.json").write_text("{not json")
    (out / "generate.json").write_text("[1, 2]")
    (out / "records" / "notes.txt").write_text("hello")
    r = runner.invoke(app, ["trajectories", "validate", str(out)])
    assert r.exit_code == 1, r.output
    flat = r.output.replace("\n", "")
    assert f"{out / 'card.json'}: unreadable" in flat
    assert f"{out / 'generate.json'}: expected a JSON object, got list" in flat
    assert f"{out / 'records' / 'notes.txt'}: not a record" in flat
    empty = tmp_path / "empty"
    empty.mkdir()
    r = runner.invoke(app, ["trajectories", "validate", str(empty)])
    assert r.exit_code == 1 and "missing (not a dataset folder)" in r.output.replace("\n", "")


def test_stats_and_validate_on_a_folder_that_does_not_exist_say_so(tmp_path):
    for command in ("stats", "validate"):
        r = runner.invoke(app, ["trajectories", command, str(tmp_path / "nope")])
        assert r.exit_code == 2 and f"{tmp_path / 'nope'}: no such folder" in r.output.replace("\n", ""), r.output
    (tmp_path / "file").write_text("x")
    r = runner.invoke(app, ["trajectories", "stats", str(tmp_path / "file")])
    assert r.exit_code == 2 and "file: not a folder" in r.output.replace("\n", "")


def test_stats_without_matplotlib_says_what_to_install_before_any_work(tiny_dataset):
    from tests.conftest import run_mixagent

    r = run_mixagent("trajectories", "stats", str(tiny_dataset), missing=["matplotlib"])
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 1 and len(lines) == 1 and not r.stdout, (r.stdout, r.stderr)
    assert "pip install 'mixagent[train]'" in lines[0] and "--no-plots" in lines[0]
    r = run_mixagent("trajectories", "stats", str(tiny_dataset), "--no-plots", missing=["matplotlib"])
    assert r.returncode == 0 and "9 trajectories" in r.stdout, r.stderr
