"""The `mixagent corpus` / `mixagent env` commands, run in-process through typer's runner."""

from typer.testing import CliRunner

from mixagent.cli import app

runner = CliRunner()


def test_corpus_build_prints_the_manifest(tiny_setting_file, cache_dir):
    result = runner.invoke(app, ["corpus", "build", "--setting", str(tiny_setting_file), "--cache-dir", str(cache_dir)])
    assert result.exit_code == 0, result.output
    for name in ("src_a", "src_b", "tgt_a", "tgt_b"):
        assert name in result.output
    assert "files:" in result.output
    again = runner.invoke(app, ["corpus", "show", "--setting", str(tiny_setting_file), "--cache-dir", str(cache_dir)])
    assert again.exit_code == 0 and "tgt_b" in again.output


def test_invalid_setting_exits_2_with_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nfields: {source: [a], target: [c]}\n"
                   "corpus: {domains: {a: {kind: files, root: .}, b: {kind: files, root: .}}}\n")
    result = runner.invoke(app, ["corpus", "build", "--setting", str(bad)])
    assert result.exit_code == 2
    assert "fields.target: unknown domain 'c'" in result.output
    assert str(bad) in result.output


def test_rollout_runs_an_episode_and_writes_history_and_plot(tiny_setting_file, cache_dir, tmp_path):
    out, png = tmp_path / "h.json", tmp_path / "h.png"
    result = runner.invoke(
        app,
        ["env", "rollout", "--setting", str(tiny_setting_file), "--cache-dir", str(cache_dir),
         "--target-share", "1.0", "--out", str(out), "--plot", str(png)],
    )
    assert result.exit_code == 0, result.output
    assert "nan" not in result.output  # nothing is trained before t = 0: no train loss, shown as a dash
    from mixagent.trajectories import History

    h = History.model_validate_json(out.read_text())
    assert h.stages == 5
    assert all(w.as_dict(h.space)["tgt_a"] + w.as_dict(h.space)["tgt_b"] > 0.99 for w in h.weights)
    assert png.stat().st_size > 10_000
    bad = runner.invoke(app, ["env", "rollout", "--setting", str(tiny_setting_file), "--target-share", "1.5"])
    assert bad.exit_code == 2 and "--target-share" in bad.output
