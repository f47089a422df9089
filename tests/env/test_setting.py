import pytest

from mixagent.env.setting import DEFAULT_SETTING, SettingError, load_setting
from tests.conftest import REPO, tiny_setting_dict


def test_default_setting_loads_and_has_at_least_8_domains():
    s = load_setting(None)
    assert s.name == "math-tiny"
    assert s.space.fields == ("source", "target")
    assert len(s.corpus.domains) >= 8
    assert set(s.fields["target"]) == {"coq", "maxima"}
    assert s.cpt.horizon >= 16
    assert load_setting("math-tiny") == s  # a name in configs/ works too
    assert load_setting(DEFAULT_SETTING).hash() == s.hash()
    # Frozen: the committed trajectory dataset was generated with exactly this setting.
    assert s.hash() == "a0b1b781e52bace1"


def test_every_shipped_setting_validates():
    from pathlib import Path

    configs = sorted(Path(DEFAULT_SETTING).parent.glob("*.yaml"))
    assert len(configs) >= 2
    for path in configs:
        load_setting(path)


def test_hashes_separate_what_each_cache_depends_on(corpus_root):
    base = tiny_setting_dict(corpus_root)
    a = load_setting(base)

    def with_cpt(**kw):
        return load_setting(tiny_setting_dict(corpus_root, cpt={**base["cpt"], **kw}))

    # the CPT budget and rate, evaluation and target priors do not change the base ...
    for same in (with_cpt(interval=9, horizon=3), with_cpt(lr=0.5),
                 load_setting(tiny_setting_dict(corpus_root, priors={"tgt_a": 5.0})),
                 load_setting(tiny_setting_dict(corpus_root, eval={"windows_per_domain": 2}))):
        assert same.base_hash() == a.base_hash() and same.hash() != a.hash()
    # ... everything pre-training reads does
    for other in (with_cpt(weight_decay=0.0), with_cpt(grad_clip=5.0), with_cpt(beta2=0.99),
                  with_cpt(min_lr_ratio=0.5), with_cpt(seq_len=16),
                  load_setting(tiny_setting_dict(corpus_root, priors={"src_a": 5.0})),
                  load_setting(tiny_setting_dict(corpus_root, seed=1))):
        assert other.base_hash() != a.base_hash()
    c = load_setting(tiny_setting_dict(corpus_root, model={"kind": "llama", "n_layer": 2, "n_head": 2, "d_model": 32}))
    assert c.data_hash() == a.data_hash() and c.base_hash() != a.base_hash()
    # the order of domains decides cross-domain dedup, so it is part of the corpus
    reordered = dict(base["corpus"])
    reordered["domains"] = dict(reversed(list(base["corpus"]["domains"].items())))
    r = load_setting(tiny_setting_dict(corpus_root, corpus=reordered))
    assert r.corpus_hash() != a.corpus_hash()


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"fields": {"source": ["src_a", "src_b"], "target": ["tgt_a", "nope"]}},
         "fields.target: unknown domain 'nope'"),
        ({"fields": {"source": ["src_a", "src_b", "tgt_a", "tgt_b"], "target": []}},
         "fields.target: the field has no domain"),
        ({"fields": {"target": ["src_a", "src_b", "tgt_a", "tgt_b"]}}, "a 'source' field is required"),
        ({"cpt": {"interval": 0}}, "cpt.interval: Input should be greater than 0 (got 0)"),
        ({"cpt": {"batch_size": -4}}, "cpt.batch_size: Input should be greater than 0 (got -4)"),
        ({"model": {"kind": "llama", "d_model": 0}}, "model.llama.d_model"),
        ({"model": {"kind": "llama", "d_model": 30, "n_head": 4}},
         "model.d_model=30 is not divisible by model.n_head=4"),
        ({"priors": {"zzz": 1.0}}, "priors: unknown domain 'zzz'"),
        ({"cpt": {"intervall": 4}}, "cpt.intervall: Extra inputs are not permitted"),
        ({"fields": {"source": ["src_a", "src b"], "target": ["tgt_a", "tgt_b"]}},
         "fields.source.1: String should match pattern"),
        ({"eval": {"context_fraction": 0.999}}, "eval.context_fraction: 0.999 leaves no continuation tokens"),
        ({"cpt": {"interval": 2, "horizon": 2, "warmup_steps": 4}}, "cpt.warmup_steps: 4 is not below"),
        ({"fields": {"source": ["src_a"], "target": ["tgt_a", "tgt_b"]}}, "domain(s) ['src_b'] belong to no field"),
    ],
)
def test_invalid_settings_fail_on_load_naming_the_field(corpus_root, patch, message):
    with pytest.raises(SettingError) as err:
        load_setting(tiny_setting_dict(corpus_root, **patch))
    assert message in str(err.value)


def test_setting_files_yaml_and_toml_and_errors_name_the_file(tmp_path, corpus_root):
    import tomllib  # noqa: F401  (stdlib; TOML is read-only in the stdlib, so write by hand)

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ncorpus: [1, 2\n")
    with pytest.raises(SettingError, match=r"bad.yaml: not valid yaml"):
        load_setting(bad)
    with pytest.raises(SettingError, match="cannot read setting"):
        load_setting(tmp_path / "missing.yaml")
    toml = tmp_path / "s.toml"
    toml.write_text(
        'name = "t"\n[fields]\nsource = ["a"]\ntarget = ["b"]\n'
        f'[corpus.domains.a]\nkind = "files"\nroot = "{corpus_root / "src_a"}"\n'
        f'[corpus.domains.b]\nkind = "files"\nroot = "{corpus_root / "tgt_a"}"\n'
    )
    s = load_setting(toml)
    assert s.space.names == ("a", "b")
    rel = tmp_path / "rel.yaml"
    rel.write_text(
        "name: r\nfields: {source: [a], target: [b]}\n"
        "corpus: {domains: {a: {kind: files, root: data/a}, b: {kind: files, root: data/b}}}\n"
    )
    assert load_setting(rel).corpus.domains["a"].root == str(tmp_path / "data" / "a")


def test_extends_inherits_and_overrides(tmp_path, corpus_root):
    import yaml

    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(tiny_setting_dict(corpus_root)))
    child = tmp_path / "child.yaml"
    child.write_text(
        "extends: base.yaml\nname: child\ncpt: {interval: 7}\n"
        "fields: {source: [src_a, tgt_a], target: [src_b, tgt_b]}\n"
    )
    s = load_setting(child)
    assert s.name == "child" and s.cpt.interval == 7
    assert s.cpt.seq_len == 32  # merged, not replaced
    assert s.fields["target"] == ("src_b", "tgt_b")  # lists are replaced
    loop = tmp_path / "loop.yaml"
    loop.write_text("extends: loop.yaml\n")
    with pytest.raises(SettingError, match="cycle"):
        load_setting(loop)
    pre = load_setting("smollm2-math")
    assert pre.model.kind == "pretrained" and pre.tokenizer.kind == "pretrained"  # kind change replaces


def test_extends_can_replace_fields_and_delete_domains(tmp_path, corpus_root):
    import yaml

    (tmp_path / "base.yaml").write_text(yaml.safe_dump(tiny_setting_dict(corpus_root)))
    child = tmp_path / "child.yaml"
    child.write_text(
        "extends: base.yaml\nname: other-target\n"
        "fields: {source: [src_a, tgt_a], code: [src_b]}\n"  # a new target field, old one gone
        "corpus: {domains: {tgt_b: null}}\n"  # and a domain dropped
    )
    s = load_setting(child)
    assert s.space.fields == ("source", "code")
    assert set(s.corpus.domains) == {"src_a", "src_b", "tgt_a"}
    # the shipped example: code as the target, no Python written
    code = load_setting("code-tiny")
    assert code.fields["target"] == ("pycode", "pydocs") and "pycode" not in code.fields["source"]


def test_an_unknown_setting_name_lists_the_known_settings():
    with pytest.raises(SettingError) as err:
        load_setting("math-tine")
    message = str(err.value)
    known = sorted(p.stem for p in (REPO / "configs").glob("*.yaml"))
    assert message.startswith("math-tine: no such setting") and "\n" not in message
    assert f"(known: {', '.join(known)})" in message and "did you mean 'math-tiny'?" in message
    with pytest.raises(SettingError, match=r"nothing-like-it: .*\(known: code-tiny, .*\)$"):
        load_setting("nothing-like-it")


def test_a_missing_extends_target_says_it_came_from_extends_and_names_both_files(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("extends: gone.yaml\nname: child\n")
    with pytest.raises(SettingError) as err:
        load_setting(child)
    assert str(err.value).startswith(f"{child}: extends: 'gone.yaml': no such file next to it "
                                     f"({tmp_path / 'gone.yaml'}) nor a packaged setting (known: code-tiny, ")


def test_a_users_own_file_anywhere_extends_a_packaged_setting(tmp_path):
    from mixagent.env.setting import CONFIGS_DIR

    for parent in ("math-tiny.yaml", "math-tiny"):
        mine = tmp_path / "elsewhere" / f"mine-{parent}.yaml"
        mine.parent.mkdir(exist_ok=True)
        mine.write_text(f"extends: {parent}\nname: mine\ncpt: {{horizon: 8}}\n")
        s = load_setting(mine)
        base = load_setting(CONFIGS_DIR / "math-tiny.yaml")
        assert (s.name, s.cpt.horizon, s.cpt.interval) == ("mine", 8, base.cpt.interval)
        assert s.space == base.space
