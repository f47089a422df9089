import gzip
import shutil

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
    for name in ("weight_schedules.png", "field_scores.png", "final_scores.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 1000


def test_generate_rejects_a_bad_setting_naming_file_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ncorpus: {domains: {a: {kind: files, root: .}}}\nfields: {source: [a]}\ncpt: {horizon: 0}\n")
    r = runner.invoke(app, ["trajectories", "generate", "--setting", str(bad), "--n", "1", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2
    assert str(bad) in r.output and "cpt.horizon" in r.output
    assert not (tmp_path / "o").exists()


def test_import_adds_exported_runs_and_validate_accepts_them(tmp_path):
    from .conftest import make_trajectory

    export = tmp_path / "runs.jsonl"
    export.write_text(make_trajectory(trajectory_id="served-aaaaaaaaaaaa").model_dump_json() + "\n")
    r = runner.invoke(app, ["trajectories", "import", str(export), "--out", str(tmp_path / "ds")])
    assert r.exit_code == 0, r.output
    assert "1 imported, 0 already there; 1 in all" in r.output
    r = runner.invoke(app, ["trajectories", "validate", str(tmp_path / "ds")])
    assert r.exit_code == 0 and "1 valid record(s), 0 problem(s)" in r.output
