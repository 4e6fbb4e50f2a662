"""Local-only loading (errors name the absent file; no network) and the scheduler-config mapping."""

import json
import shutil
import socket

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffmem.adapters.diffusers_sd import StableDiffusionAdapter  # noqa: E402
from diffmem.adapters.dit import DiTAdapter  # noqa: E402
from diffmem.adapters.local import ModelFilesMissing, check_pipeline_dir  # noqa: E402
from diffmem.adapters.scheduler_map import sampler_from_scheduler, schedule_from_scheduler  # noqa: E402
from diffmem.schedules import DiscreteSchedule  # noqa: E402
from diffusers_tiny import SD_BETAS, make_scheduler, one_thread, tiny_dit_pipeline, tiny_sd_pipeline  # noqa: E402, F401

SD_PARTS = StableDiffusionAdapter.components


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("sd")
    tiny_sd_pipeline().save_pretrained(path)
    return path


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection or resolve a host fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_loads_offline(sd_dir, no_network):
    sd = StableDiffusionAdapter.from_pretrained(sd_dir)
    assert type(sd.pipeline.unet).__name__ == "UNet2DConditionModel" and sd.pipeline.safety_checker is None
    assert sd.describe()["source"] == str(sd_dir)


def test_missing_directory_and_hub_ids_fail_without_network(tmp_path, no_network):
    for path in (tmp_path / "absent", "CompVis/stable-diffusion-v1-4"):
        with pytest.raises(ModelFilesMissing, match="not a local directory") as err:
            StableDiffusionAdapter.from_pretrained(path)
        assert str(path) in str(err.value)
    assert issubclass(ModelFilesMissing, ValueError) and issubclass(ModelFilesMissing, FileNotFoundError)


@pytest.mark.parametrize("remove,named", [
    ("model_index.json", "model_index.json"),
    ("unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.safetensors"),
    ("text_encoder/model.safetensors", "text_encoder/model.safetensors"),
    ("vae/config.json", "vae/config.json"),
    ("scheduler/scheduler_config.json", "scheduler/scheduler_config.json"),
    ("tokenizer/tokenizer.json", "tokenizer/tokenizer.json"),
    ("unet", "unet"),
])
def test_incomplete_directory_names_the_missing_file(sd_dir, tmp_path, no_network, remove, named):
    copy = tmp_path / "sd"
    shutil.copytree(sd_dir, copy)
    target = copy / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(ModelFilesMissing, match="is missing") as err:
        StableDiffusionAdapter.from_pretrained(copy)
    assert str(copy / named) in str(err.value)


def test_half_a_vocab_pair_names_the_other_half(sd_dir, tmp_path):
    copy = tmp_path / "sd"
    shutil.copytree(sd_dir, copy)
    (copy / "tokenizer" / "tokenizer.json").unlink()
    (copy / "tokenizer" / "vocab.json").write_text("{}")
    with pytest.raises(ModelFilesMissing, match="merges.txt"):
        check_pipeline_dir(copy, SD_PARTS)


def test_wrong_pipeline_kind_and_undeclared_component(sd_dir, tmp_path):
    dit_dir = tmp_path / "dit"
    tiny_dit_pipeline().save_pretrained(dit_dir)
    with pytest.raises(ModelFilesMissing, match="'unet'"):
        StableDiffusionAdapter.from_pretrained(dit_dir)
    index = json.loads((sd_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    with pytest.raises(ValueError, match="'StableDiffusionPipeline'"):
        DiTAdapter.from_pretrained(_with_fake_transformer(sd_dir, tmp_path / "sd"))


def _with_fake_transformer(src, dst):
    shutil.copytree(src, dst)
    shutil.copytree(dst / "unet", dst / "transformer")
    index = json.loads((dst / "model_index.json").read_text())
    index["transformer"] = ["diffusers", "DiTTransformer2DModel"]
    (dst / "model_index.json").write_text(json.dumps(index))
    return dst


# --- scheduler config -> schedule, grid, solver, x_T ------------------------------------------------------------

@pytest.mark.parametrize("kind,config", [("ddim", {}), ("ddim", {"set_alpha_to_one": True, "steps_offset": 0}),
                                         ("ddpm", {"timestep_spacing": "trailing"}), ("euler", {}),
                                         ("euler", {"timestep_spacing": "leading"})])
def test_grid_equals_the_schedulers_own(kind, config):
    sch = make_scheduler(kind, **config)
    sch.set_timesteps(25)
    spec = sampler_from_scheduler(sch, 25)
    from_json = sampler_from_scheduler({"_class_name": type(sch).__name__, **dict(sch.config)}, 25)
    assert torch.equal(spec.grid.timesteps, from_json.grid.timesteps) and spec.solver == from_json.solver == kind
    assert torch.allclose(spec.grid.timesteps, sch.timesteps.double(), rtol=0, atol=1e-4)  # diffusers: float32
    assert torch.equal(spec.schedule.alphas_cumprod, sch.alphas_cumprod.double())
    assert torch.equal(schedule_from_scheduler(dict(sch.config)).alphas_cumprod, spec.schedule.alphas_cumprod)


def test_sd14_pndm_config_samples_with_an_explicit_solver():
    # SD 1.4 ships a PNDM config: no diffmem counterpart, but its noise schedule and spacing carry over
    pndm = {"_class_name": "PNDMScheduler", **SD_BETAS, "set_alpha_to_one": False, "skip_prk_steps": True,
            "steps_offset": 1, "clip_sample": False}
    with pytest.raises(ValueError, match="'PNDMScheduler'"):
        sampler_from_scheduler(pndm, 50)
    spec = sampler_from_scheduler(pndm, 50, solver="ddim")
    assert spec.grid.timesteps[:2].tolist() == [981.0, 961.0]
    assert float(spec.grid.alpha_bar_next[-1]) == float(DiscreteSchedule.named("scaled_linear").alphas_cumprod[0])
    ref = diffusers.DDIMScheduler.from_config(pndm)  # what users do in diffusers
    ref.set_timesteps(50)
    assert spec.grid.timesteps.tolist() == ref.timesteps.double().tolist()


@pytest.mark.parametrize("kind,option", [("ddim", {"clip_sample": True}), ("ddpm", {"thresholding": True}),
                                         ("ddpm", {"variance_type": "learned_range"}),
                                         ("euler", {"use_karras_sigmas": True}),
                                         ("euler", {"interpolation_type": "log_linear"}),
                                         ("ddim", {"prediction_type": "flow"})])
def test_unsupported_scheduler_options_are_named(kind, option):
    config = {"_class_name": type(make_scheduler(kind)).__name__, **SD_BETAS, "clip_sample": False, **option}
    key = next(iter(option))
    with pytest.raises(ValueError, match=key):
        sampler_from_scheduler(config, 10)


def test_bad_solver_eta_and_zero_snr():
    sch = make_scheduler("euler")
    with pytest.raises(ValueError, match="'heun'"):
        sampler_from_scheduler(sch, 10, solver="heun")
    with pytest.raises(ValueError, match="eta=0.5"):
        sampler_from_scheduler(sch, 10, eta=0.5)
    with pytest.raises(ValueError, match="rescale_betas_zero_snr"):
        schedule_from_scheduler({**dict(sch.config), "rescale_betas_zero_snr": True})
