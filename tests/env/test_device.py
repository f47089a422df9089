"""The device option on a machine without a GPU: CPU stays the default, hashes and CPU numbers do not
move, ``cuda`` is refused by name, ``auto`` resolves to the CPU and says so, and a folder admits a
GPU's runs as it admits another CPU's."""

import json
from pathlib import Path

import pytest

from mixagent.env.setting import RuntimeSpec, SettingError, known_settings, load_setting, with_device
from mixagent.trajectories.environment import START_TOLERANCE, FolderEnvironment, ForeignEnvironmentError
from mixagent.trajectories.storage import FileStore

REPO = Path(__file__).resolve().parents[2]
torch = pytest.importorskip("torch")
no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where no GPU exists")


def test_the_committed_folders_keep_their_setting_hash_whatever_the_device():
    pinned = {}
    for gen in sorted((REPO / "data" / "trajectories").glob("*/generate.json")):
        d = json.loads(gen.read_text())
        pinned[d["setting_name"]] = d["setting_hash"]
    assert pinned["math-tiny"] == "a0b1b781e52bace1"
    for name, h in pinned.items():
        s = load_setting(name)
        assert s.runtime == RuntimeSpec() and s.hash() == h
        for device in ("cuda", "auto"):
            other = with_device(s, device)
            assert other.runtime.device == device
            assert (other.hash(), other.base_hash(), other.data_hash()) == (h, s.base_hash(), s.data_hash())
    assert set(pinned) <= set(known_settings())


def test_bad_device_values_and_bf16_on_the_cpu_are_refused_by_name():
    with pytest.raises(SettingError, match=r"--device: 'gpu': Input should be 'cpu', 'cuda' or 'auto'"):
        with_device(load_setting("math-tiny"), "gpu")
    with pytest.raises(ValueError, match=r"runtime\.autocast: 'bf16' needs runtime\.device 'cuda'"):
        RuntimeSpec(autocast="bf16")
    s = with_device(load_setting("math-tiny"), "cuda").model_copy(
        update={"runtime": RuntimeSpec(device="cuda", autocast="bf16")})
    with pytest.raises(SettingError, match=r"--device: 'cpu': runtime\.autocast: 'bf16' needs runtime\.device"):
        with_device(s, "cpu")
    assert with_device(s, None) is s


def test_a_setting_file_names_its_runtime(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("extends: math-tiny\nruntime: {device: cpu, autocast: bf16}\n")
    with pytest.raises(SettingError, match=r"s\.yaml: invalid setting: runtime: runtime\.autocast: 'bf16'"):
        load_setting(f)
    f.write_text("extends: math-tiny\nruntime: {device: tpu}\n")
    with pytest.raises(SettingError, match=r"runtime\.device"):
        load_setting(f)
    f.write_text("extends: math-tiny\nruntime: {device: auto, autocast: bf16}\n")
    assert load_setting(f).hash() == load_setting("math-tiny").hash()


@no_gpu
def test_cuda_without_a_gpu_is_a_clear_error(tiny_setting, cache_dir):
    from mixagent.env.backend import resolve_device
    from mixagent.env.mixing_env import DataMixingEnv

    with pytest.raises(SettingError, match=r"runtime\.device: 'cuda', but torch\.cuda\.is_available\(\) is False"):
        DataMixingEnv(with_device(tiny_setting, "cuda"), cache_dir=cache_dir)
    with pytest.raises(SettingError, match=r"runtime\.autocast: 'bf16' needs CUDA, but runtime\.device 'auto' "
                                           r"resolves to cpu here"):
        resolve_device(RuntimeSpec(device="auto", autocast="bf16"))
    assert resolve_device(RuntimeSpec(device="auto")) == torch.device("cpu")


def test_placing_on_the_cpu_changes_nothing(tiny_setting, tiny_backend):
    opt, model, windows = tiny_backend.optimizer, tiny_backend.model, tiny_backend.eval_set.windows
    assert tiny_backend.place(RuntimeSpec()) == torch.device("cpu")
    assert tiny_backend.optimizer is opt and tiny_backend.model is model and tiny_backend.eval_set.windows is windows
    assert tiny_backend.sampler.device is None and tiny_backend.autocast == "none"


@no_gpu
def test_auto_runs_on_the_cpu_here_bit_for_bit_and_the_record_says_so(tiny_setting, tiny_dataset, cache_dir,
                                                                       tmp_path):
    """One plan item generated with ``device: auto`` equals the same item of the default run exactly,
    and its record's numerics are the CPU's alone (a GPU run names the GPU there)."""
    from mixagent.agent.generate import GenerateConfig, generate
    from mixagent.env.provenance import device_numerics, numerics

    assert device_numerics("cpu") == "" and numerics("cpu") == numerics()
    out = tmp_path / "auto"
    generate(GenerateConfig(out=out, n=1, threads=1, cache_dir=cache_dir, progress=False),
             with_device(tiny_setting, "auto"))
    (new,) = FileStore(out).load_all()
    old = {s.trajectory.header.trajectory_id: s for s in FileStore(tiny_dataset).load_all()}[
        new.trajectory.header.trajectory_id]
    assert new.trajectory.header == old.trajectory.header  # the setting hash included
    assert new.trajectory.history.model_dump_json() == old.trajectory.history.model_dump_json()
    assert new.meta.provenance == old.meta.provenance
    assert new.meta.provenance["numerics"] == numerics() and "cuda" not in new.meta.provenance["numerics"]
    assert "runtime" not in json.loads((out / "setting.json").read_text())


def _moved(traj, shift):
    from mixagent.trajectories import History

    h = traj.history
    f0 = h.feedback[0].model_copy(update={"domain_losses": {d: v + shift for d, v in
                                                            h.feedback[0].domain_losses.items()}})
    return traj.model_copy(update={"history": History(space=h.space, feedback=[f0, *h.feedback[1:]],
                                                      weights=h.weights)})


def test_a_gpu_run_joins_a_cpu_folder_as_another_cpu_would(tmp_path, tiny_dataset):
    runs = [s.trajectory for s in FileStore(tiny_dataset).load_all()]
    cpu = {"corpus": "c" * 16, "base": "b" * 16, "numerics": "x86_64 A (AVX512); torch 2.13.0+cpu"}
    gpu = {**cpu, "numerics": cpu["numerics"] + "; cuda NVIDIA H100 (sm_90), CUDA 13.0, cuDNN 91000, "
                                                "bfloat16 autocast"}
    env = FolderEnvironment(tmp_path)
    env.admit(runs[0], cpu)
    # another device is other numerics: its base is not compared, its start is
    env.admit(_moved(runs[1], 0.9 * START_TOLERANCE), {**gpu, "base": "e" * 16})
    with pytest.raises(ForeignEnvironmentError, match=r"starts from another evaluation .* differ by up to 0\.011"):
        env.admit(_moved(runs[2], 1.1 * START_TOLERANCE), {**gpu, "base": "e" * 16})
    # on one GPU's numerics, as on one CPU's, the base must match the folder's
    with pytest.raises(ForeignEnvironmentError, match=r"another base model \(weights digest f{16}, the folder's "
                                                      r"is e{16}\)"):
        env.admit(runs[3], {**gpu, "base": "f" * 16})
    with pytest.raises(ForeignEnvironmentError, match=r"another base model"):
        env.admit(runs[3], {**cpu, "base": "f" * 16})


def test_ray_workers_reserve_a_gpu_only_for_cuda():
    from mixagent.agent.runner import RunnerConfig, RunnerError, ray_actor_options

    cfg = RunnerConfig(workers=2, threads=3)
    cpu = load_setting("math-tiny").model_dump(mode="json")
    cuda = with_device(load_setting("math-tiny"), "cuda").model_dump(mode="json")
    auto = with_device(load_setting("math-tiny"), "auto").model_dump(mode="json")
    assert ray_actor_options(cfg, cpu, cluster_gpus=8) == {"num_cpus": 3, "num_gpus": 0}
    assert ray_actor_options(cfg, cuda, cluster_gpus=0) == {"num_cpus": 3, "num_gpus": 1.0}
    assert ray_actor_options(cfg, auto, cluster_gpus=2) == {"num_cpus": 3, "num_gpus": 1.0}
    assert ray_actor_options(cfg, auto, cluster_gpus=0) == {"num_cpus": 3, "num_gpus": 0}
    shared = RunnerConfig(workers=4, threads=1, gpus_per_worker=0.25)
    assert ray_actor_options(shared, cuda, cluster_gpus=1) == {"num_cpus": 1, "num_gpus": 0.25}
    with pytest.raises(RunnerError, match=r"gpus_per_worker: must be > 0, got 0"):
        RunnerConfig(gpus_per_worker=0).check()


def test_the_device_option_on_the_command_line_is_checked(tiny_setting_file):
    from tests.conftest import run_mixagent

    r = run_mixagent("env", "rollout", "--setting", str(tiny_setting_file), "--device", "gpu")
    assert r.returncode == 2, r.stderr
    assert "--device: 'gpu'" in r.stdout + r.stderr


@no_gpu
def test_generate_refuses_cuda_here_before_building_anything(tiny_setting_file, tmp_path):
    from tests.conftest import run_mixagent

    home = tmp_path / "home"
    r = run_mixagent("trajectories", "generate", "--setting", str(tiny_setting_file), "--n", "1", "--out",
                     str(tmp_path / "out"), "--device", "cuda", env={"MIXAGENT_HOME": str(home)})
    assert r.returncode == 2, r.stderr
    assert "runtime.device: 'cuda', but torch.cuda.is_available() is False" in r.stdout + r.stderr
    assert not home.exists() and not (tmp_path / "out").exists()  # refused before any corpus or folder
