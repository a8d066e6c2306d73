"""T2V backends (ZeroScope, AnimateDiff v1/v2/v3, AnimateLCM) on tiny random-weight models saved in
the real on-disk layouts, loaded back through the registry."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from t2v_fixtures import build_model_folder, tiny_sd1_base  # noqa: E402

from lib_elevator.errors import ModelError  # noqa: E402
from lib_elevator.noise import TorchNoise  # noqa: E402
from lib_elevator.schedule import alphas_cumprod  # noqa: E402
from lib_elevator.t2v import animatediff  # noqa: E402
from lib_elevator.t2v.base import lcm_boundary  # noqa: E402
from lib_elevator.t2v.registry import (  # noqa: E402
    detect_t2v_kind,
    list_t2v_models,
    load_t2v,
)
from lib_elevator.tiny import t2v as tiny  # noqa: E402
from lib_elevator.weights import PickleRefusedError  # noqa: E402

FRAMES, CHANNELS, SIZE = 4, 4, 8


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models spend their time in thread hand-offs: one thread is faster, and a busy machine
    (other processes on the other core) does not slow each op down to milliseconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("t2v_models"))
    paths = build_model_folder(root)
    base = tiny_sd1_base(seed=10)
    return {
        "root": root,
        "paths": paths,
        "base": base,
        "zeroscope": load_t2v(paths["zeroscope"]),
        "animatediff": load_t2v(paths["mm_v2"], base=base),
        "animatelcm": load_t2v(paths["animatelcm"], base=base),
    }


def frames(seed: int = 0) -> torch.Tensor:
    return torch.randn((FRAMES, CHANNELS, SIZE, SIZE), generator=torch.Generator().manual_seed(seed))


def unet_direct(backend, x: torch.Tensor, t: int, context: torch.Tensor) -> torch.Tensor:
    """The backend's UNet called by hand on frames (F, C, h, w); returns (F, C, h, w)."""
    video = x.permute(1, 0, 2, 3).unsqueeze(0)
    if backend.kind == "zeroscope":
        out = backend.unet(video, t, encoder_hidden_states=context).sample
    else:  # UNetMotionModel wants the context once per frame
        out = backend.unet(video, t, encoder_hidden_states=context.repeat_interleave(FRAMES, 0)).sample
    return out.squeeze(0).permute(1, 0, 2, 3)


# ------------------------------------------------------------------------------------ loading


def test_detect_kinds(models):
    paths = models["paths"]
    assert detect_t2v_kind(paths["zeroscope"]) == "zeroscope"
    for key in ("mm_v1", "mm_v2", "mm_v3"):
        assert detect_t2v_kind(paths[key]) == "animatediff"
    assert detect_t2v_kind(paths["animatelcm"]) == "animatelcm"
    # A pickled motion module is recognised, but it cannot run without the opt-in.
    with pytest.raises(PickleRefusedError, match="mm_sd_v15_v2.ckpt"):
        detect_t2v_kind(paths["mm_v2_ckpt"])
    assert detect_t2v_kind(paths["mm_v2_ckpt"], allow_pickle=True) == "animatediff"


def test_pia_motion_module_is_refused_at_detection(tmp_path):
    """A PIA / SparseCtrl module (its own conv_in) is a T2V model that cannot run: detection says so
    by name, before anything is loaded, and listings show it with that reason."""
    from safetensors.torch import load_file, save_file

    plain = tiny.write_tiny_motion_module(str(tmp_path / "plain.safetensors"), "v2", seed=2)
    state = load_file(plain)
    state["conv_in.weight"] = torch.zeros(32, 9, 3, 3)
    pia = str(tmp_path / "pia_sd15.safetensors")
    save_file(state, pia)
    os.remove(plain)
    with pytest.raises(ModelError, match=r"pia_sd15.*PIA / SparseCtrl"):
        detect_t2v_kind(pia)
    assert list_t2v_models([str(tmp_path)]) == []
    [entry] = list_t2v_models([str(tmp_path)], include_unusable=True)
    assert entry["kind"] is None and "PIA / SparseCtrl" in entry["error"]


def test_zeroscope_attributes(models, tmp_path):
    zs = models["zeroscope"]
    assert (zs.kind, zs.sampler, zs.prediction_type) == ("zeroscope", "ddim", "epsilon")
    assert zs.latent_space.family == "sd1" and zs.latent_space.scaling_factor == zs.vae.config.scaling_factor
    assert torch.equal(zs.alphas_cumprod, alphas_cumprod("scaled_linear"))
    assert zs.tokenizer.pad_token == "!"  # the folder's own tokenizer settings are kept
    # Without vae/ the backend still loads; it just cannot project latents.
    folder = tiny.build_tiny_zeroscope_folder(str(tmp_path / "novae"), seed=0, with_vae=False)
    assert load_t2v(folder).vae is None


def test_animatediff_attributes(models):
    ad, lcm = models["animatediff"], models["animatelcm"]
    assert (ad.kind, ad.sampler, ad.motion_version) == ("animatediff", "ddim", "v2")
    assert (lcm.kind, lcm.sampler) == ("animatelcm", "lcm")
    for backend in (ad, lcm):
        assert torch.equal(backend.alphas_cumprod, alphas_cumprod("linear", 0.00085, 0.012))
        assert backend.latent_space == models["base"].latent_space
        assert backend.vae is models["base"].vae


@pytest.mark.parametrize("version,positions,mid", [("v1", 24, False), ("v2", 32, True), ("v3", 32, False)])
def test_motion_module_versions(models, version, positions, mid):
    from safetensors.torch import load_file

    path = models["paths"][f"mm_{version}"]
    backend = load_t2v(path, base=models["base"])
    assert backend.motion_version == version and backend.max_frames == positions
    assert hasattr(backend.unet.mid_block, "motion_modules") == mid
    # Weights land where the original names say: one temporal attention projection, the
    # position table, and a spatial layer copied from the base UNet.
    original = load_file(path)
    prefix = "up_blocks.1.motion_modules.2"
    got = backend.unet.up_blocks[1].motion_modules[2]
    assert torch.equal(
        got.transformer_blocks[0].attn2.to_v.weight,
        original[f"{prefix}.temporal_transformer.transformer_blocks.0.attention_blocks.1.to_v.weight"],
    )
    assert torch.equal(got.proj_out.weight, original[f"{prefix}.temporal_transformer.proj_out.weight"])
    assert torch.equal(
        got.transformer_blocks[0].pos_embed.pe,
        original[f"{prefix}.temporal_transformer.transformer_blocks.0.attention_blocks.0.pos_encoder.pe"],
    )
    base_unet = models["base"].unet
    assert torch.equal(
        backend.unet.down_blocks[0].resnets[0].conv1.weight, base_unet.down_blocks[0].resnets[0].conv1.weight
    )


def test_too_many_frames(models):
    v1 = load_t2v(models["paths"]["mm_v1"], base=models["base"])
    prompts = v1.encode_prompt("a", "")
    with pytest.raises(ValueError, match="at most 24 frames"):
        v1.predict_noise(torch.zeros(25, CHANNELS, SIZE, SIZE), 500, prompts, 1.0)


def test_pickled_motion_module_needs_opt_in(models):
    path = models["paths"]["mm_v2_ckpt"]
    with pytest.raises(PickleRefusedError, match=path):
        load_t2v(path, base=models["base"])
    backend = load_t2v(path, base=models["base"], allow_pickle=True)
    same = models["animatediff"]  # written from the same seed as .safetensors
    for a, b in zip(backend.unet.parameters(), same.unet.parameters()):
        assert torch.equal(a, b)


def test_diffusers_folder_pickle_needs_opt_in(models, tmp_path):
    """A ZeroScope folder with only pickled .bin weights (older hub uploads) needs the opt-in."""
    from diffusers import UNet3DConditionModel

    folder = str(tmp_path / "zs_bin")
    shutil.copytree(models["paths"]["zeroscope"], folder)
    unet_dir = os.path.join(folder, "unet")
    UNet3DConditionModel.from_pretrained(unet_dir).save_pretrained(unet_dir, safe_serialization=False)
    os.remove(os.path.join(unet_dir, "diffusion_pytorch_model.safetensors"))
    with pytest.raises(PickleRefusedError, match="diffusion_pytorch_model.bin"):
        load_t2v(folder)
    backend = load_t2v(folder, allow_pickle=True)
    ref = models["zeroscope"].unet
    assert torch.equal(backend.unet.conv_in.weight, ref.conv_in.weight)


# ------------------------------------------------------------------------------------ prompts, noise


@pytest.mark.parametrize("name", ["zeroscope", "animatediff"])
def test_encode_prompt_shapes(models, name):
    backend = models[name]
    pair = backend.encode_prompt("a red car driving", "blurry")
    assert pair.cond.shape == pair.uncond.shape == (1, 77, 32)
    assert not torch.allclose(pair.cond, pair.uncond)


@pytest.mark.parametrize("name", ["zeroscope", "animatediff", "animatelcm"])
def test_predict_noise_is_the_guided_unet(models, name):
    backend = models[name]
    prompts = backend.encode_prompt("a red car driving", "blurry")
    x, t = frames(1), 501
    with torch.no_grad():
        plain = backend.predict_noise(x, t, prompts, 1.0)
        guided = backend.predict_noise(x, t, prompts, 7.5)
        cond = unet_direct(backend, x, t, prompts.cond)
        uncond = unet_direct(backend, x, t, prompts.uncond)
    assert plain.shape == (FRAMES, CHANNELS, SIZE, SIZE) and torch.isfinite(guided).all()
    torch.testing.assert_close(plain, cond, rtol=0, atol=1e-6)
    # batched (uncond, cond) vs separate calls differ by float rounding, amplified by the guidance
    torch.testing.assert_close(guided, uncond + 7.5 * (cond - uncond), rtol=1e-4, atol=1e-4)
    # The frames interact through the temporal layers: changing one frame changes the others.
    y = x.clone()
    y[0] += 1.0
    with torch.no_grad():
        moved = backend.predict_noise(y, t, prompts, 1.0)
    assert not torch.allclose(moved[1:], plain[1:])


def test_forward_chunking_same_result(models):
    zs = models["zeroscope"]
    prompts = zs.encode_prompt("a boat", "")
    x = frames(2)
    with torch.no_grad():
        plain = zs.predict_noise(x, 301, prompts, 7.5)
        zs.enable_forward_chunking(chunk_size=2, dim=1)
        try:
            chunked = zs.predict_noise(x, 301, prompts, 7.5)
            with pytest.raises(ValueError, match="multiples of 2"):
                zs.predict_noise(torch.zeros(3, CHANNELS, SIZE, SIZE), 301, prompts, 7.5)
        finally:
            zs.disable_forward_chunking()
    torch.testing.assert_close(chunked, plain, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------ denoise


def test_denoise_is_seeded(models):
    zs = models["zeroscope"]
    prompts = zs.encode_prompt("a boat", "")
    clean = frames(3)
    with torch.no_grad():
        a = zs.denoise(clean, 581, [581, 561, 541], prompts, 7.5, TorchNoise(5))
        b = zs.denoise(clean, 581, [581, 561, 541], prompts, 7.5, TorchNoise(5))
        c = zs.denoise(clean, 581, [581, 561, 541], prompts, 7.5, TorchNoise(6))
    assert a.shape == clean.shape and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("name,schedule", [("zeroscope", "scaled_linear"), ("animatediff", "linear")])
def test_ddim_denoise_matches_diffusers(models, name, schedule):
    """base.denoise with the DDIM rule = diffusers' DDIMScheduler (eta 0) on a 50-step grid."""
    from diffusers import DDIMScheduler

    backend = models[name]
    prompts = backend.encode_prompt("a boat on a lake", "low quality")
    clean, start, steps, stride, guidance, seed = frames(4), 581, 4, 20, 7.5, 11

    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule=schedule,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="leading",
    )
    scheduler.set_timesteps(50)
    timesteps = [start - k * stride for k in range(steps)]
    assert set(timesteps) <= set(scheduler.timesteps.tolist())
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        x = scheduler.add_noise(clean, torch.randn(clean.shape, generator=generator), torch.tensor([start]))
        for t in timesteps:
            eps = backend.predict_noise(x, t, prompts, guidance)
            out = scheduler.step(eps, t, x)
            x = out.prev_sample
        reference = out.pred_original_sample
        ours = backend.denoise(clean, start, timesteps, prompts, guidance, TorchNoise(seed))
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)


def test_lcm_denoise_matches_diffusers(models):
    """base.denoise with the LCM rule = diffusers' LCMScheduler.step, same noise draws (LCMScheduler
    draws one randn of the sample's shape after every step but the last, from the generator)."""
    from diffusers import LCMScheduler

    backend = models["animatelcm"]
    prompts = backend.encode_prompt("a boat on a lake", "low quality")
    clean, start, steps, stride, guidance, seed = frames(5), 799, 4, 50, 2.0, 12
    scheduler = LCMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="linear", timestep_scaling=10.0
    )
    timesteps = [start - k * stride for k in range(steps)]
    scheduler.set_timesteps(timesteps=timesteps)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        x = scheduler.add_noise(clean, torch.randn(clean.shape, generator=generator), torch.tensor([start]))
        for t in timesteps:
            eps = backend.predict_noise(x, t, prompts, guidance)
            out = scheduler.step(eps, t, x, generator=generator)
            x = out.prev_sample
        reference = out.denoised
        ours = backend.denoise(clean, start, timesteps, prompts, guidance, TorchNoise(seed))
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("t", [0, 1, 19, 259, 999])
def test_lcm_boundary_scalings_match_diffusers(t):
    from diffusers import LCMScheduler

    c_skip, c_out = LCMScheduler().get_scalings_for_boundary_condition_discrete(t)
    sample, clean = torch.tensor(2.0, dtype=torch.float64), torch.tensor(3.0, dtype=torch.float64)
    assert math.isclose(lcm_boundary(sample, clean, t).item(), c_out * 3.0 + c_skip * 2.0, rel_tol=1e-12)


# ------------------------------------------------------------------------------------ AnimateLCM LoRA


def _unet_without_lora(models):
    from diffusers import UNetMotionModel

    adapter = animatediff.load_motion_adapter(models["paths"]["animatelcm"])
    return UNetMotionModel.from_unet2d(models["base"].unet, adapter)


def test_animatelcm_lora_is_merged(models):
    from safetensors.torch import load_file

    lcm = models["animatelcm"]
    plain = _unet_without_lora(models)
    lora = load_file(os.path.join(models["paths"]["animatelcm"], tiny.ANIMATELCM_LORA_NAME))
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    stem = "lora_unet_" + name.replace(".", "_")
    down, up, alpha = lora[f"{stem}.lora_down.weight"], lora[f"{stem}.lora_up.weight"], lora[f"{stem}.alpha"]
    expected = plain.get_submodule(name).weight + 0.8 * (alpha.item() / down.shape[0]) * (up @ down)
    torch.testing.assert_close(lcm.unet.get_submodule(name).weight, expected, rtol=1e-5, atol=1e-6)
    # Temporal layers are not touched, and the base (image) UNet is not either.
    mm = "down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.to_q"
    assert torch.equal(lcm.unet.get_submodule(mm).weight, plain.get_submodule(mm).weight)
    assert torch.equal(models["base"].unet.get_submodule(name).weight, plain.get_submodule(name).weight)


def test_animatelcm_peft_lora_format(models, tmp_path):
    folder = tiny.build_tiny_animatelcm_folder(str(tmp_path / "AnimateLCM"), seed=4, lora_format="peft")
    backend = load_t2v(folder, base=models["base"])
    plain = _unet_without_lora(models)
    name = "up_blocks.1.attentions.0.proj_out"
    assert backend.kind == "animatelcm"
    assert not torch.allclose(backend.unet.get_submodule(name).weight, plain.get_submodule(name).weight)


def test_animatelcm_motion_module_file_finds_sibling_lora(models, tmp_path):
    folder = tmp_path / "mm"
    folder.mkdir()
    path = tiny.write_tiny_motion_module(str(folder / "AnimateLCM_sd15_t2v.safetensors"), "v2", seed=4)
    with pytest.raises(ModelError, match="LCM LoRA"):
        detect_t2v_kind(path)
    shutil.copy(os.path.join(models["paths"]["animatelcm"], tiny.ANIMATELCM_LORA_NAME), folder)
    backend = load_t2v(path, base=models["base"])
    assert (backend.kind, backend.sampler) == ("animatelcm", "lcm")
    torch.testing.assert_close(
        backend.unet.down_blocks[0].attentions[0].proj_in.weight,
        models["animatelcm"].unet.down_blocks[0].attentions[0].proj_in.weight,
    )


# ------------------------------------------------------------------------------------ errors


def _error(path, **kwargs):
    with pytest.raises(ModelError) as info:
        load_t2v(path, **kwargs)
    message = str(info.value)
    assert str(path) in message, message
    return message


def test_errors_name_the_path_and_the_problem(models, tmp_path):
    root, paths = models["root"], models["paths"]
    assert "does not exist" in _error(tmp_path / "nope")
    assert "empty" in _error(os.path.join(root, "empty"))
    assert "unsupported file type '.txt'" in _error(os.path.join(root, "notes.txt"))
    assert "looks like a LoRA" in _error(os.path.join(root, "some_lora.safetensors"))
    assert "not a UNet3DConditionModel" in _error(os.path.join(root, "sd15"))
    assert "needs a SD1.5 base" in _error(paths["mm_v2"])
    assert "needs a SD1.5 base" in _error(paths["animatelcm"])
    assert "pickled" in _error(paths["mm_v2_ckpt"], base=models["base"])
    sd2 = tiny_sd1_base(seed=10, kind="sd2")
    assert "SD1.5" in _error(paths["mm_v2"], base=sd2) and "sd2" in _error(paths["mm_v2"], base=sd2)

    other = tmp_path / "other"
    other.mkdir()
    (other / "readme.md").write_text("hi")
    message = _error(other)
    assert "no model_index.json" in message and "no MotionAdapter config.json" in message

    original = tmp_path / "zs2_576w"
    original.mkdir()
    for name in ("text2video_pytorch_model.pth", "VQGAN_autoencoder.pth", "open_clip_pytorch_model.bin"):
        (original / name).write_bytes(b"")
    (original / "configuration.json").write_text("{}")
    message = _error(original)
    assert "original ModelScope format" in message and "diffusers layout" in message

    adapter_only = tmp_path / "adapter_config_only"
    adapter_only.mkdir()
    (adapter_only / "config.json").write_text(json.dumps({"_class_name": "MotionAdapter"}))
    assert "no weights" in _error(adapter_only)

    broken = tmp_path / "zs_broken"
    shutil.copytree(paths["zeroscope"], broken)
    shutil.rmtree(broken / "text_encoder")
    assert "text_encoder/config.json" in _error(broken)

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not really")
    assert "not a readable safetensors file" in _error(garbage)


def test_motion_module_must_fit_the_base(models, tmp_path):
    path = tiny.write_tiny_motion_module(str(tmp_path / "wide.safetensors"), "v2", block_out_channels=[64, 64])
    assert "block channels [64, 64]" in _error(path, base=models["base"])


# ------------------------------------------------------------------------------------ listing


def test_list_t2v_models(models):
    listed = list_t2v_models([models["root"], "/does/not/exist"])
    assert [(m["name"], m["kind"]) for m in listed] == [
        ("AnimateLCM", "animatelcm"),
        ("mm_sd_v15.safetensors", "animatediff"),
        ("mm_sd_v15_v2.safetensors", "animatediff"),
        ("v3_sd15_mm.safetensors", "animatediff"),
        ("zeroscope", "zeroscope"),
    ]
    assert all(os.path.isabs(m["path"]) for m in listed)
    # Pickles run only with the opt-in; without it the listing says why they are not offered.
    pickled = [m for m in list_t2v_models([models["root"]], include_unusable=True) if m["kind"] is None]
    assert [m["name"] for m in pickled] == ["mm_sd_v15_v2.ckpt"] and "pickled" in pickled[0]["error"]
    assert "mm_sd_v15_v2.ckpt" in [m["name"] for m in list_t2v_models([models["root"]], allow_pickle=True)]
    # A folder that is itself a model lists as that model, not as its parts.
    assert [m["kind"] for m in list_t2v_models([models["paths"]["animatelcm"]])] == ["animatelcm"]


# ------------------------------------------------------------------------------------ integration


def test_base_given_as_a_path(models, tmp_path):
    """A base path goes through loaders.load_t2i (the other helpers' loader and tiny SD1 folder)."""
    loaders = pytest.importorskip("lib_elevator.loaders")
    tiny_t2i = pytest.importorskip("lib_elevator.tiny.t2i")
    folder = tiny_t2i.build_tiny_t2i_folder(str(tmp_path / "sd1"), kind="sd1", seed=0)
    base = loaders.load_t2i(folder)
    config = base.unet.config
    mm = tiny.write_tiny_motion_module(
        str(tmp_path / "mm.safetensors"),
        "v2",
        block_out_channels=config.block_out_channels,
        layers_per_block=config.layers_per_block,
    )
    backend = load_t2v(mm, base=folder)
    prompts = backend.encode_prompt("a cat", "")
    out = backend.predict_noise(torch.randn(FRAMES, config.in_channels, SIZE, SIZE), 400, prompts, 2.0)
    assert out.shape == (FRAMES, config.in_channels, SIZE, SIZE) and torch.isfinite(out).all()
