"""VideoCrafter2 as a T2V backend (lib_elevator/t2v/videocrafter.py): detection, loading the published
containers strictly, bad files and their messages, the signal-rescaled SDEdit against the official maths,
the fps condition, conversion to safetensors, and an end-to-end command-line run.

Everything runs on the tiny checkpoint of lib_elevator/tiny/videocrafter.py, which has the real file's
2,039 keys in the real container."""

from __future__ import annotations

import argparse
import math
import os
import shutil

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from lib_elevator.cli import main
from lib_elevator.errors import ModelError
from lib_elevator.noise import TorchNoise
from lib_elevator.settings import PRESET_STEPS, PRESETS, Settings
from lib_elevator.t2v import videocrafter_net as net
from lib_elevator.t2v.registry import detect_t2v_kind, list_t2v_models, load_t2v
from lib_elevator.t2v.videocrafter import VideoCrafter2Backend, check_schedule_buffers, convert_checkpoint
from lib_elevator.tiny import videocrafter as tiny
from lib_elevator.weights import PickleRefusedError

FRAMES, SIZE = 3, 8


@pytest.fixture(scope="module")
def vc2(model_cache):
    """The tiny VideoCrafter2 folder (model.ckpt, its yaml and text-tower json), built once per session."""
    folder = model_cache / "videocrafter2-tiny"
    if not (folder / tiny.CHECKPOINT_NAME).exists():
        tiny.write_tiny_videocrafter(str(folder), seed=0)
    return folder


@pytest.fixture(scope="module")
def file_state(vc2):
    """The checkpoint's own tensors, read the plain way, as the reference for what loads."""
    return torch.load(vc2 / tiny.CHECKPOINT_NAME, map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def backend(vc2):
    return VideoCrafter2Backend.load(str(vc2), allow_pickle=True)


@pytest.fixture(scope="module")
def prompts(backend):
    return backend.encode_prompt("a lighthouse in a storm", "blurry")


def model_copy(vc2, folder, weights=True, configs=True):
    """A model folder sharing the tiny checkpoint (hard link: no 97 MB copy) and copying its configs."""
    os.makedirs(folder, exist_ok=True)
    if weights:
        os.link(vc2 / tiny.CHECKPOINT_NAME, folder / tiny.CHECKPOINT_NAME)
    if configs:
        for name in (tiny.YAML_NAME, tiny.TINY_TEXT_ARCH + ".json"):
            shutil.copyfile(vc2 / name, folder / name)
    return folder


def latents(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def unet_out(model, prompts, t=501, seed=1):
    video = latents(1, 4, FRAMES, SIZE, SIZE, seed=seed)
    with torch.no_grad():
        return model.model_output(video, t, prompts.cond)


def error_of(call, *args, **kwargs) -> str:
    with pytest.raises(ModelError) as caught:
        call(*args, **kwargs)
    return str(caught.value)


def edit_yaml(folder, change):
    path = folder / tiny.YAML_NAME
    config = yaml.safe_load(path.read_text())
    change(config["model"]["params"])
    path.write_text(yaml.safe_dump(config))


# ------------------------------------------------------------------------------ detection and loading


def test_detects_the_file_its_folder_and_the_pickle_opt_in(vc2, tmp_path):
    assert detect_t2v_kind(str(vc2), allow_pickle=True) == "videocrafter2"
    assert detect_t2v_kind(str(vc2 / tiny.CHECKPOINT_NAME), allow_pickle=True) == "videocrafter2"
    for path in (vc2, vc2 / tiny.CHECKPOINT_NAME):  # pickled: refused without the opt-in, with the reason
        with pytest.raises(PickleRefusedError, match="holds pickled weights"):
            detect_t2v_kind(str(path))
    # Listings show it as unusable, with that reason, and as usable with the opt-in.
    models = model_copy(vc2, tmp_path / "models" / "VideoCrafter2").parent
    (models / "notes.txt").write_text("not a model")
    listed = list_t2v_models([str(models)], include_unusable=True)
    assert [(m["name"], m["kind"]) for m in listed] == [("VideoCrafter2", None)]
    assert "holds pickled weights" in listed[0]["error"]
    assert list_t2v_models([str(models)]) == []
    assert [(m["name"], m["kind"]) for m in list_t2v_models([str(models)], allow_pickle=True)] == [
        ("VideoCrafter2", "videocrafter2")
    ]


def test_a_models_directory_holding_a_checkpoint_is_not_taken_for_one_model(vc2, tmp_path):
    """A VideoCrafter2 file among other models: the directory is listed entry by entry, not as one model."""
    from lib_elevator.tiny.t2v import write_tiny_motion_module

    models = tmp_path / "models"
    models.mkdir()
    os.link(vc2 / tiny.CHECKPOINT_NAME, models / "videocrafter2.ckpt")
    shutil.copyfile(vc2 / tiny.YAML_NAME, models / "videocrafter2.yaml")
    shutil.copyfile(vc2 / (tiny.TINY_TEXT_ARCH + ".json"), models / (tiny.TINY_TEXT_ARCH + ".json"))
    write_tiny_motion_module(str(models / "mm_sd_v15_v2.safetensors"), "v2", seed=2)
    listed = list_t2v_models([str(models)], allow_pickle=True)
    assert [(m["name"], m["kind"]) for m in listed] == [
        ("mm_sd_v15_v2.safetensors", "animatediff"),
        ("videocrafter2.ckpt", "videocrafter2"),
    ]


def test_strict_load_of_the_real_key_sets(backend, file_state):
    """UNet 1,484, text tower 294 and VAE 248 tensors, each holding the file's values; nothing else kept."""
    unet, text = backend.unet.state_dict(), backend.text_tower.state_dict()
    assert len(unet) == 1484 and len(text) == 294 and len(backend.vae.state_dict()) == 248
    assert len(file_state) == 1484 + 294 + 248 + 13
    for prefix, loaded in ((net.UNET_PREFIX, unet), (net.TEXT_PREFIX, text)):
        expected = {k[len(prefix) :]: v for k, v in file_state.items() if k.startswith(prefix)}
        assert set(loaded) == set(expected)
        assert all(torch.equal(loaded[k], v) for k, v in expected.items())
    # The VAE went through diffusers' name conversion: spot-check a renamed tensor.
    assert torch.equal(
        backend.vae.state_dict()["decoder.conv_in.weight"], file_state[net.VAE_PREFIX + "decoder.conv_in.weight"]
    )
    assert backend.kind == "videocrafter2" and backend.sampler == "ddim" and backend.prediction_type == "epsilon"
    assert backend.latent_space.family == "sd1" and backend.latent_space.scaling_factor == 0.18215
    assert backend.fps == net.DEFAULT_FPS == 28
    assert torch.equal(backend.alphas_cumprod, net.vc2_alphas_cumprod())
    assert not any(p.requires_grad for p in backend.unet.parameters())


def test_the_built_in_config_takes_the_full_size_key_set(tmp_path):
    """Without a yaml, the real model.ckpt's parts (names and shapes, here as meta tensors) load strictly:
    UNet 1,484, ViT-H/14 text tower 294, kl-f8 VAE 248."""
    from lib_elevator.t2v.videocrafter import build_text_tower, build_unet, build_vae, resolve_model

    (tmp_path / "model.safetensors").write_bytes(b"")  # resolve_model only needs the path to exist
    files = resolve_model(str(tmp_path / "model.safetensors"))
    assert files.yaml is None and files.config["text_arch"] == "ViT-H-14"
    with torch.device("meta"):
        unet_weights = net.VideoCrafterUNet().state_dict()
        text_weights = net.OpenCLIPTextTower().state_dict()
        vae_weights = {k: torch.empty(s) for k, s in tiny.ldm_vae_shapes(net.VC2_VAE_PARAMS).items()}
    assert (len(unet_weights), len(text_weights), len(vae_weights)) == (1484, 294, 248)
    unet = build_unet(files, unet_weights)
    assert sum(p.numel() for p in unet.parameters()) == 1_413_284_420
    assert build_text_tower(files, text_weights).token_embedding.weight.shape == (49408, 1024)
    assert list(build_vae(files, vae_weights).config.block_out_channels) == [128, 256, 512, 512]


@pytest.mark.parametrize("container", ["module", "bare"])
def test_the_other_containers_load_the_same_model(vc2, file_state, backend, prompts, tmp_path, container):
    folder = model_copy(vc2, tmp_path / container, weights=False)
    tiny.save_videocrafter_checkpoint(file_state, str(folder / tiny.CHECKPOINT_NAME), container)
    assert detect_t2v_kind(str(folder), allow_pickle=True) == "videocrafter2"
    other = load_t2v(str(folder), allow_pickle=True)
    assert isinstance(other, VideoCrafter2Backend)
    assert torch.equal(unet_out(other, prompts), unet_out(backend, prompts))


def test_encode_prompt_is_the_towers_penultimate_layer(backend, file_state):
    tower = net.OpenCLIPTextTower(net.text_config_from_open_clip(tiny.TINY_OPEN_CLIP_CONFIG)).eval()
    tower.load_state_dict({k[len(net.TEXT_PREFIX) :]: v for k, v in file_state.items() if k.startswith(net.TEXT_PREFIX)})
    pair = backend.encode_prompt("a red fox", "")
    with torch.no_grad():
        expected = tower.encode(net.vc2_tokenize(["a red fox", ""]), layer="penultimate")
    assert pair.cond.shape == (1, 77, 64)
    assert torch.equal(pair.cond[0], expected[0]) and torch.equal(pair.uncond[0], expected[1])
    assert not torch.equal(pair.cond, pair.uncond)


def test_float16_load_casts_every_part(vc2, prompts):
    half = VideoCrafter2Backend.load(str(vc2), dtype=torch.float16, allow_pickle=True)
    dtypes = {p.dtype for m in (half.unet, half.text_tower, half.vae) for p in m.parameters()}
    assert dtypes == {torch.float16} and half.dtype == torch.float16
    assert half.encode_prompt("a fox", "").cond.dtype == torch.float16


# ------------------------------------------------------------------------------ bad files


def test_lavie_weights_are_named_as_such(tmp_path):
    from lib_elevator.tiny.lavie import write_tiny_lavie

    path = write_tiny_lavie(str(tmp_path / "LaVie"))
    message = error_of(VideoCrafter2Backend.load, path, allow_pickle=True)
    assert "this is a LaVie checkpoint" in message and path in message


def test_truncated_files_are_named_truncated(vc2, tmp_path):
    folder = model_copy(vc2, tmp_path / "cut", weights=False)
    data = (vc2 / tiny.CHECKPOINT_NAME).read_bytes()
    (folder / tiny.CHECKPOINT_NAME).write_bytes(data[: len(data) // 2])
    path = str(folder / tiny.CHECKPOINT_NAME)
    for call in (VideoCrafter2Backend.load, detect_t2v_kind):
        message = error_of(call, path, allow_pickle=True)
        assert "truncated or damaged" in message and path in message, message


def test_a_pickle_that_needs_more_than_tensors_is_refused_by_the_weights_only_loader(tmp_path):
    path = tmp_path / "model.ckpt"
    names = {net.UNET_PREFIX + "input_blocks.1.0.temopral_conv.conv1.0.weight": torch.zeros(2)}
    torch.save({"state_dict": names, "hyper_parameters": argparse.Namespace(lr=1e-5)}, path)
    assert detect_t2v_kind(str(path), allow_pickle=True) == "videocrafter2"  # its names are VC2's
    message = error_of(VideoCrafter2Backend.load, str(path), allow_pickle=True)
    assert "holds more than tensors (it pickles argparse.Namespace)" in message
    assert "weights-only loader refuses" in message and str(path) in message


def test_a_config_that_does_not_fit_the_weights_names_keys_and_shapes(vc2, tmp_path):
    wider = model_copy(vc2, tmp_path / "wider")
    edit_yaml(wider, lambda p: p["unet_config"]["params"].update(model_channels=64))
    message = error_of(VideoCrafter2Backend.load, str(wider), allow_pickle=True)
    assert f"does not fit its config {wider / tiny.YAML_NAME}: UNet tensors" in message
    assert "of another shape (e.g. fps_embedding.0.bias: (128,) in the file, (256,) in the config)" in message

    deeper = model_copy(vc2, tmp_path / "deeper")
    edit_yaml(deeper, lambda p: p["unet_config"]["params"].update(num_res_blocks=3))
    message = error_of(VideoCrafter2Backend.load, str(deeper), allow_pickle=True)
    assert "missing (" in message and "unexpected (" in message and "of another shape" in message
    missing = message.split("missing (")[1].split(")")[0].split(", ")
    assert len(missing) == 4 and missing[-1] == "..."  # the first three, then "..."

    # Without the yaml the built-in (full-size) config applies, and the message says what would help.
    bare = model_copy(vc2, tmp_path / "bare", configs=False)
    message = error_of(VideoCrafter2Backend.load, str(bare), allow_pickle=True)
    assert "does not fit the built-in VideoCrafter2 config" in message and "inference yaml beside" in message

    # A text tower arch whose open_clip json is missing.
    no_json = model_copy(vc2, tmp_path / "no_json")
    os.remove(no_json / (tiny.TINY_TEXT_ARCH + ".json"))
    message = error_of(VideoCrafter2Backend.load, str(no_json), allow_pickle=True)
    assert f"arch '{tiny.TINY_TEXT_ARCH}' is not built in" in message and f"{tiny.TINY_TEXT_ARCH}.json" in message


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda p: p["unet_config"]["params"].update(use_relative_position=True, temporal_conv=False), "VideoCrafter1"),
        (lambda p: p["unet_config"]["params"].update(use_image_attention=True), "use_image_attention"),
        (lambda p: p.update(use_scale=False), "use_scale"),
    ],
)
def test_configs_of_other_videocrafter_models_are_refused(vc2, tmp_path, change, words):
    folder = model_copy(vc2, tmp_path / "other")
    edit_yaml(folder, change)
    message = error_of(VideoCrafter2Backend.load, str(folder), allow_pickle=True)
    assert words in message and str(folder / tiny.YAML_NAME) in message


def test_checkpoints_of_other_videocrafter_models_are_refused(tmp_path):
    from safetensors.torch import save_file

    vc1 = tmp_path / "vc1.safetensors"
    save_file(
        {
            net.UNET_PREFIX + "fps_embedding.0.weight": torch.zeros(1),
            net.UNET_PREFIX + "input_blocks.1.2.transformer_blocks.0.attn1.relative_position_k.embeddings_table":
                torch.zeros(1),
        },
        str(vc1),
    )
    i2v = tmp_path / "i2v.safetensors"
    save_file(
        {
            net.UNET_PREFIX + "input_blocks.1.0.temopral_conv.conv1.0.weight": torch.zeros(1),
            "image_proj_model.proj_in.weight": torch.zeros(1),
        },
        str(i2v),
    )
    assert "a VideoCrafter1 checkpoint" in error_of(detect_t2v_kind, str(vc1))
    assert "image-to-video" in error_of(detect_t2v_kind, str(i2v))
    assert "image-to-video" in error_of(VideoCrafter2Backend.load, str(i2v))
    # An image-model checkpoint (no temporal layers) is still no T2V model at all.
    sd = tmp_path / "sd15.safetensors"
    save_file({net.UNET_PREFIX + "input_blocks.0.0.weight": torch.zeros(1)}, str(sd))
    assert "looks like an image-model checkpoint" in error_of(detect_t2v_kind, str(sd))


def test_legacy_pickles_are_read_without_mmap_and_only_with_the_opt_in(tmp_path):
    """A pre-zip torch pickle: its names cannot be read without unpickling, so a folder holding one as
    model.ckpt asks for the opt-in, and with it the file is read whole (mmap needs the zip format)."""
    from lib_elevator.t2v.registry import NotT2VModel

    folder = tmp_path / "legacy"
    folder.mkdir()
    unet_only = {net.UNET_PREFIX + "input_blocks.1.0.temopral_conv.conv1.0.weight": torch.zeros(2)}
    torch.save({"state_dict": unet_only}, folder / "model.ckpt", _use_new_zipfile_serialization=False)
    with pytest.raises(PickleRefusedError):
        detect_t2v_kind(str(folder))
    assert detect_t2v_kind(str(folder), allow_pickle=True) == "videocrafter2"
    assert "holds no text encoder (cond_stage_model.model.* weights)" in error_of(
        VideoCrafter2Backend.load, str(folder), allow_pickle=True
    )
    # Under another name an unreadable pickle is nobody's model folder.
    os.rename(folder / "model.ckpt", folder / "other.ckpt")
    with pytest.raises(NotT2VModel):
        detect_t2v_kind(str(folder))


def test_a_folder_with_two_checkpoints_asks_which(vc2, tmp_path):
    folder = model_copy(vc2, tmp_path / "two")
    os.link(vc2 / tiny.CHECKPOINT_NAME, folder / "other.ckpt")
    os.rename(folder / tiny.CHECKPOINT_NAME, folder / "first.ckpt")
    assert "several VideoCrafter2 weights files (first.ckpt, other.ckpt)" in error_of(
        detect_t2v_kind, str(folder), allow_pickle=True
    )


def test_schedule_buffers_are_checked_against_the_formulas(file_state, caplog):
    config = net.read_vc2_config(tiny.tiny_inference_yaml())
    buffers = {k: file_state[k] for k in net.SCHEDULE_BUFFERS}
    assert check_schedule_buffers(buffers, config, "model.ckpt") == []
    shifted = dict(buffers, scale_arr=buffers["scale_arr"] * 0.9)
    assert check_schedule_buffers(shifted, config, "model.ckpt") == ["scale_arr"]
    assert "scale_arr differ" in caplog.text


# ------------------------------------------------------------------------------ sampling maths


def test_runs_are_deterministic(backend, prompts):
    clean = latents(FRAMES, 4, SIZE, SIZE, seed=3)
    runs = [backend.denoise(clean, 441, [441, 421], prompts, 12.0, TorchNoise(7)) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    other_seed = backend.denoise(clean, 441, [441, 421], prompts, 12.0, TorchNoise(8))
    assert not torch.allclose(runs[0], other_seed)


def by_hand(backend, clean, start, timesteps, prompts, guidance, seed, scales=None):
    """SDEdit composed from the official maths: q_sample with s_t, then DDIM steps with s_t."""
    draw = TorchNoise(seed).randn(tuple(clean.shape))
    x = net.vc2_add_noise(clean, draw, start, scales=scales)
    for k, t in enumerate(timesteps):
        eps = backend.predict_noise(x, t, prompts, guidance)
        t_next = timesteps[k + 1] if k + 1 < len(timesteps) else None
        x, prediction = net.vc2_ddim_step(x, eps, t, t_next, scales=scales)
        if t_next is None:
            return prediction


def test_sdedit_equals_the_official_noising_and_ddim_steps(backend, prompts):
    """Three steps across the end of the s_t ramp (s = 0.7 at 421 and 401, 0.71 at 381), guided 12x, in
    float64. The network takes its GroupNorm statistics in float32 whatever the dtype, so the two orders of
    the same arithmetic (1e-16 apart) meet the UNet as inputs up to ~1e-7 apart, which three guided steps
    grow to ~2e-6 of the result; s_t = 1 moves it by more than 5 %."""
    clean = latents(FRAMES, 4, SIZE, SIZE, seed=4).double()
    steps = [421, 401, 381]
    backend.to(dtype=torch.float64)  # float32 -> float64 -> float32 is exact: the fixture is unchanged after
    try:
        ours = backend.denoise(clean, 421, steps, prompts, 12.0, TorchNoise(11))
        official = by_hand(backend, clean, 421, steps, prompts, 12.0, 11)
        # s_t matters: the same loop with s_t = 1 (the ZeroScope maths) is another result.
        plain = by_hand(backend, clean, 421, steps, prompts, 12.0, 11, scales=torch.ones(1000, dtype=torch.float64))
        backend.signal_scale = lambda t: 1.0  # an instance override: T2VBackend's default
        try:
            unscaled = backend.denoise(clean, 421, steps, prompts, 12.0, TorchNoise(11))
        finally:
            del backend.signal_scale
    finally:
        backend.to(dtype=torch.float32)
    assert ours.dtype == torch.float64
    assert (ours - official).abs().max() <= 1e-5 * official.abs().max()
    assert backend.signal_scale(421) == pytest.approx(0.7) and backend.signal_scale(0) == 1.0
    assert backend.signal_scale(381) == pytest.approx(1 - 0.3 * 381 / 399)
    assert (plain - official).abs().max() > 0.05 * official.abs().max()
    assert (unscaled - plain).abs().max() <= 1e-5 * plain.abs().max()


def test_sdedit_with_a_fixed_noise_predictor_matches_the_formulas(backend, prompts, monkeypatch):
    """The same check independent of the UNet: eps is a fixed function of (x, t)."""

    def stub(video, timestep, context):
        return 0.3 * video + math.sin(timestep / 100.0)

    monkeypatch.setattr(backend, "model_output", stub)
    clean = latents(FRAMES, 4, SIZE, SIZE, seed=5)
    steps = [601, 581, 561]
    ours = backend.denoise(clean, 601, steps, prompts, 7.5, TorchNoise(2))
    draw = TorchNoise(2).randn(tuple(clean.shape))
    x = net.vc2_add_noise(clean, draw, 601)
    for t, t_next in ((601, 581), (581, 561), (561, None)):
        x, prediction = net.vc2_ddim_step(x, stub(x, t, None), t, t_next)
    assert torch.allclose(ours, prediction, rtol=1e-5, atol=1e-6)


def test_the_fps_condition_changes_the_video(backend, prompts):
    at_28 = unet_out(backend, prompts)
    clean = latents(FRAMES, 4, SIZE, SIZE, seed=6)
    sdedit_28 = backend.denoise(clean, 441, [441, 421], prompts, 12.0, TorchNoise(1))
    backend.fps = 8
    try:
        at_8 = unet_out(backend, prompts)
        sdedit_8 = backend.denoise(clean, 441, [441, 421], prompts, 12.0, TorchNoise(1))
    finally:
        backend.fps = 28
    assert (at_8 - at_28).abs().max() > 1e-3 * at_28.abs().max()
    assert not torch.allclose(sdedit_8, sdedit_28)
    assert torch.equal(unet_out(backend, prompts), at_28)


# ------------------------------------------------------------------------------ conversion


def test_convert_round_trip_in_float32(vc2, backend, prompts, tmp_path, capsys):
    source = model_copy(vc2, tmp_path / "source")
    out = tmp_path / "converted" / "vc2.safetensors"
    # A pickle is only read with the opt-in, also for converting.
    assert main(["convert", str(source), "--out", str(out), "--dtype", "float32"]) == 2
    assert "add --allow-pickle" in capsys.readouterr().err
    assert main(["convert", str(source), "--out", str(out), "--dtype", "float32", "--allow-pickle"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    # The yaml (under the new stem) and the text tower's json travel with it.
    assert sorted(os.listdir(out.parent)) == sorted(["vc2.safetensors", "vc2.yaml", tiny.TINY_TEXT_ARCH + ".json"])

    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as f:
        keys = list(f.keys())
        assert f.metadata()["model"] == "videocrafter2"
    assert len(keys) == 1484 + 294 + 248 and not set(keys) & set(net.SCHEDULE_BUFFERS)
    for path in (out, out.parent):  # no opt-in needed now
        assert detect_t2v_kind(str(path)) == "videocrafter2"
    converted = load_t2v(str(out))
    assert torch.equal(unet_out(converted, prompts), unet_out(backend, prompts))
    assert torch.equal(converted.encode_prompt("a fox", "").cond, backend.encode_prompt("a fox", "").cond)


def test_convert_defaults_to_float16_beside_the_checkpoint(vc2, tmp_path, capsys):
    from safetensors import safe_open

    folder = model_copy(vc2, tmp_path / "fp16")
    assert main(["convert", str(folder), "--allow-pickle"]) == 0
    out = folder / "model.fp16.safetensors"
    assert capsys.readouterr().out.strip() == str(out)
    with safe_open(str(out), framework="pt") as f:
        assert f.get_tensor(net.UNET_PREFIX + "out.2.weight").dtype == torch.float16
    # The folder now loads from the safetensors, without the opt-in, and the pickle still loads as before.
    assert detect_t2v_kind(str(folder)) == "videocrafter2"
    half = load_t2v(str(folder))
    assert half.unet.out[2].weight.dtype == torch.float32  # the working dtype asked for
    assert detect_t2v_kind(str(folder / tiny.CHECKPOINT_NAME), allow_pickle=True) == "videocrafter2"
    # Converting the conversion again would only make the folder ambiguous.
    assert main(["convert", str(folder)]) == 2
    assert "already a .safetensors file: there is nothing to convert" in capsys.readouterr().err


def test_convert_refuses_other_kinds_and_bad_files(vc2, tmp_path, capsys):
    from lib_elevator.tiny.t2v import write_tiny_motion_module

    module = write_tiny_motion_module(str(tmp_path / "mm_sd_v15_v2.safetensors"), "v2", seed=2)
    assert main(["convert", module]) == 2
    assert "(animatediff): there is nothing to convert" in capsys.readouterr().err
    wider = model_copy(vc2, tmp_path / "wider")
    edit_yaml(wider, lambda p: p["unet_config"]["params"].update(model_channels=64))
    with pytest.raises(ModelError, match="does not fit"):
        convert_checkpoint(str(wider), str(tmp_path / "never.safetensors"), allow_pickle=True)
    assert not (tmp_path / "never.safetensors").exists()


# ------------------------------------------------------------------------------ preset and end to end


def test_the_preset_is_the_paper_setting_with_videocrafter2_guidance():
    preset = PRESETS["VideoCrafter2-like"]
    assert preset == dict(PRESETS["ZeroScope-like"], t2v_guidance=12.0)
    assert PRESET_STEPS["VideoCrafter2-like"] == 50
    Settings().with_preset("VideoCrafter2-like").validate()


def test_end_to_end_from_the_command_line(vc2, tmp_path, capsys):
    from lib_elevator.tiny.t2i import build_tiny_t2i_folder

    t2i = build_tiny_t2i_folder(str(tmp_path / "sd1"), kind="sd1")
    args = ["generate", "--t2i", t2i, "--t2v", str(vc2), "--prompt", "a lighthouse", "--preset", "VideoCrafter2-like",
            "--frames", "4", "--width", "32", "--height", "32", "--steps", "10", "--t2v-steps", "2",
            "--refine-points", "20%,60%"]
    assert main([*args, "--out", str(tmp_path / "refused.png")]) == 2
    assert "holds pickled weights" in capsys.readouterr().err
    assert main([*args, "--allow-pickle", "--out", str(tmp_path / "v.png")]) == 0
    assert "'t2v': 4" in capsys.readouterr().err  # two refine points, two T2V steps each
    frames_dir = tmp_path / "v-frames"
    frames = np.stack([np.array(Image.open(frames_dir / name)) for name in sorted(os.listdir(frames_dir))])
    assert frames.shape == (4, 32, 32, 3) and frames.std() > 0


def test_a_videocrafter2_checkpoint_given_as_the_image_model_is_refused(vc2):
    """Its keys carry an OpenCLIP tower and a VAE like an SD2 checkpoint: the loader says what it is."""
    from lib_elevator.errors import ModelError
    from lib_elevator.loaders import load_t2i

    weights = os.path.join(vc2, "model.ckpt")
    with pytest.raises(ModelError, match="is a VideoCrafter2 text-to-video checkpoint, not an image model"):
        load_t2i(weights, allow_pickle=True)
