"""LaVie base as a T2V backend (lib_elevator/t2v/lavie.py): detection, strict loading of the published
container, the SD1.x base that supplies text encoder and VAE, bad files and their messages, LaVie's linear
schedule and its DDIM SDEdit, conversion to safetensors, the preset, and end-to-end runs (command line and
the WebUI's model loader).

Everything runs on the tiny checkpoint of lib_elevator/tiny/lavie.py, which has the real file's 830 keys in
the real `{"ema": ...}` container, and on the tiny SD1 model (its CLIP text encoder is 32 wide, as the tiny
LaVie's cross-attention)."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
from types import SimpleNamespace

import pytest
import torch

from lib_elevator.cli import main
from lib_elevator.errors import ModelError
from lib_elevator.noise import TorchNoise
from lib_elevator.schedule import alphas_cumprod
from lib_elevator.settings import PRESET_STEPS, PRESETS, Settings
from lib_elevator.t2v import lavie_net as net
from lib_elevator.t2v.lavie import LaVieBackend, build_unet, convert_checkpoint, lavie_alphas_cumprod, resolve_model
from lib_elevator.t2v.registry import NEEDS_BASE, detect_t2v_kind, list_t2v_models, load_t2v
from lib_elevator.tiny.lavie import LAVIE_WEIGHTS_NAME, TINY_LAVIE_UNET_CONFIG, write_tiny_lavie
from lib_elevator.weights import PickleRefusedError

FRAMES, SIZE = 3, 8
FAST = ["--frames", "4", "--width", "32", "--height", "32", "--steps", "10", "--t2v-steps", "2",
        "--refine-points", "20%,60%"]


@pytest.fixture(scope="module")
def lavie(model_cache):
    """The tiny LaVie folder (lavie_base.pt + config.json), built once per session."""
    folder = model_cache / "lavie-tiny"
    if not (folder / LAVIE_WEIGHTS_NAME).exists():
        write_tiny_lavie(str(folder), seed=0)
    return folder


@pytest.fixture(scope="module")
def file_state(lavie):
    """The checkpoint's own tensors, read the plain way, as the reference for what loads."""
    return torch.load(lavie / LAVIE_WEIGHTS_NAME, map_location="cpu", weights_only=True)["ema"]


@pytest.fixture(scope="module")
def sd1():
    from lib_elevator.tiny.t2i import tiny_t2i

    return tiny_t2i("sd1", seed=0)


@pytest.fixture(scope="module")
def backend(lavie, sd1):
    return LaVieBackend.load(str(lavie), sd1, allow_pickle=True)


@pytest.fixture(scope="module")
def prompts(backend):
    return backend.encode_prompt("a lighthouse in a storm", "blurry")


def model_copy(lavie, folder, weights=True, config=True):
    """A model folder sharing the tiny checkpoint (hard link: no copy) and copying its config.json."""
    os.makedirs(folder, exist_ok=True)
    if weights:
        os.link(lavie / LAVIE_WEIGHTS_NAME, folder / LAVIE_WEIGHTS_NAME)
    if config:
        shutil.copyfile(lavie / "config.json", folder / "config.json")
    return folder


def write_config(folder, **changes):
    (folder / "config.json").write_text(json.dumps({**TINY_LAVIE_UNET_CONFIG, **changes}))


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


# ------------------------------------------------------------------------------ detection


def test_detects_the_file_its_folder_and_the_pickle_opt_in(lavie, tmp_path):
    assert detect_t2v_kind(str(lavie), allow_pickle=True) == "lavie"
    assert detect_t2v_kind(str(lavie / LAVIE_WEIGHTS_NAME), allow_pickle=True) == "lavie"
    for path in (lavie, lavie / LAVIE_WEIGHTS_NAME):  # pickled: refused without the opt-in, with the reason
        with pytest.raises(PickleRefusedError, match="holds pickled weights"):
            detect_t2v_kind(str(path))
    # Listings show it as unusable with that reason, and as usable with the opt-in.
    models = model_copy(lavie, tmp_path / "models" / "LaVie").parent
    (models / "notes.txt").write_text("not a model")
    listed = list_t2v_models([str(models)], include_unusable=True)
    assert [(m["name"], m["kind"]) for m in listed] == [("LaVie", None)]
    assert "holds pickled weights" in listed[0]["error"]
    assert list_t2v_models([str(models)]) == []
    assert [(m["name"], m["kind"]) for m in list_t2v_models([str(models)], allow_pickle=True)] == [("LaVie", "lavie")]
    assert "lavie" in NEEDS_BASE  # the WebUI plugs the loaded SD1.x checkpoint in


def test_the_published_folder_layout_and_a_shared_models_directory(lavie, tmp_path):
    """The release's other stages beside the base are passed over by name (never opened); a models directory
    holding a LaVie file among other models is listed entry by entry, not taken for one model."""
    from lib_elevator.tiny.t2v import write_tiny_motion_module

    release = model_copy(lavie, tmp_path / "pretrained_models")
    for other in ("lavie_interpolation.pt", "lavie_vsr.pt"):
        (release / other).write_bytes(b"not opened")
    assert detect_t2v_kind(str(release), allow_pickle=True) == "lavie"

    models = tmp_path / "models"
    models.mkdir()
    os.link(lavie / LAVIE_WEIGHTS_NAME, models / LAVIE_WEIGHTS_NAME)
    shutil.copyfile(lavie / "config.json", models / "config.json")
    write_tiny_motion_module(str(models / "mm_sd_v15_v2.safetensors"), "v2", seed=2)
    listed = list_t2v_models([str(models)], allow_pickle=True)
    assert [(m["name"], m["kind"]) for m in listed] == [
        (LAVIE_WEIGHTS_NAME, "lavie"),
        ("mm_sd_v15_v2.safetensors", "animatediff"),
    ]

    two = model_copy(lavie, tmp_path / "two")
    os.link(lavie / LAVIE_WEIGHTS_NAME, two / "lavie_finetuned.pt")
    os.rename(two / LAVIE_WEIGHTS_NAME, two / "lavie_other.pt")
    assert "several LaVie weights files (lavie_finetuned.pt, lavie_other.pt)" in error_of(
        detect_t2v_kind, str(two), allow_pickle=True
    )


def test_videocrafter2_weights_are_not_taken_for_lavie(model_cache, sd1):
    from lib_elevator.tiny import videocrafter as tiny_vc2

    vc2 = model_cache / "videocrafter2-tiny"  # the folder test_videocrafter_backend.py builds
    if not (vc2 / tiny_vc2.CHECKPOINT_NAME).exists():
        tiny_vc2.write_tiny_videocrafter(str(vc2), seed=0)
    checkpoint = str(vc2 / tiny_vc2.CHECKPOINT_NAME)
    assert detect_t2v_kind(checkpoint, allow_pickle=True) == "videocrafter2"
    assert detect_t2v_kind(str(vc2), allow_pickle=True) == "videocrafter2"
    message = error_of(LaVieBackend.load, checkpoint, sd1, allow_pickle=True)
    assert "this is a VideoCrafter2 checkpoint" in message and checkpoint in message
    assert "holds no LaVie base weights" in error_of(LaVieBackend.load, str(vc2), sd1, allow_pickle=True)


# ------------------------------------------------------------------------------ loading


def test_strict_load_of_the_real_key_set(backend, file_state, sd1):
    """830 file tensors: the 814 learned ones become the UNet's, holding the file's values; the 16 RoPE copies
    are checked and dropped. Only the base's text encoder, tokenizer and VAE are kept, not its UNet."""
    loaded = backend.unet.state_dict()
    freqs = {k for k in file_state if k.endswith(net.ROPE_FREQS_SUFFIX)}
    assert len(file_state) == 830 and len(freqs) == 16 and len(loaded) == 814
    assert set(loaded) == set(file_state) - freqs
    assert all(torch.equal(loaded[k], file_state[k]) for k in loaded)
    assert backend.kind == "lavie" and backend.sampler == "ddim" and backend.prediction_type == "epsilon"
    assert backend.latent_space.family == "sd1" and backend.latent_space.scaling_factor == 0.18215
    assert backend.text_encoder is sd1.text_encoders[0] and backend.tokenizer is sd1.tokenizers[0]
    assert backend.vae is sd1.vae
    assert all(value is not sd1.unet and value is not sd1 for value in vars(backend).values())
    assert not any(p.requires_grad for p in backend.unet.parameters())


def test_the_built_in_config_takes_the_full_size_key_set(tmp_path):
    """Without a config.json, the real lavie_base.pt's names and shapes (here as meta tensors) load strictly
    through the production loader: 909,124,100 learned parameters."""
    from safetensors.torch import save_file

    # resolve_model reads the names only: one LaVie name is enough to stand for the file
    save_file({"mid_block.attentions.0.transformer_blocks.0.attn_temp.to_q.weight": torch.zeros(1)},
              str(tmp_path / "lavie_base.safetensors"))
    files = resolve_model(str(tmp_path / "lavie_base.safetensors"))
    assert files.config_path is None and files.config == net.LaVieConfig()
    with torch.device("meta"):
        full = net.LaVieUNet()
    state = full.file_state_dict()  # meta tensors, and the RoPE constant (real values) 16 times
    weights, freqs = net.split_rope_freqs(state)
    assert (len(state), len(weights), len(freqs)) == (830, 814, 16)
    unet = build_unet(files, weights, freqs)
    assert sum(p.numel() for p in unet.parameters()) == 909_124_356 - 16 * 16


@pytest.mark.parametrize("container", ["bare", "fp16"])
def test_other_containers_load_the_same_model(lavie, file_state, backend, prompts, sd1, tmp_path, container):
    """A bare state dict loads like the {"ema": ...} container; a float16 copy of the file passes the RoPE check
    (to float16 precision) and loads in the working dtype."""
    folder = model_copy(lavie, tmp_path / container, weights=False)
    if container == "bare":
        torch.save(dict(file_state), folder / LAVIE_WEIGHTS_NAME)
    else:
        torch.save({"ema": {k: v.half() for k, v in file_state.items()}}, folder / LAVIE_WEIGHTS_NAME)
    other = load_t2v(str(folder), base=sd1, allow_pickle=True)
    assert isinstance(other, LaVieBackend) and other.dtype == torch.float32
    if container == "bare":
        assert torch.equal(unet_out(other, prompts), unet_out(backend, prompts))
    else:
        expected = unet_out(backend, prompts)
        assert (unet_out(other, prompts) - expected).abs().max() < 2e-2 * expected.abs().max()


def test_encode_prompt_is_the_bases_clip_last_hidden_state(backend, sd1):
    encoder, tokenizer = sd1.text_encoders[0], sd1.tokenizers[0]
    pair = backend.encode_prompt("a red fox", "")
    ids = tokenizer(["a red fox", ""], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        expected = encoder(ids.input_ids).last_hidden_state
    assert pair.cond.shape == (1, 77, 32) == pair.uncond.shape
    assert torch.equal(pair.cond[0], expected[0]) and torch.equal(pair.uncond[0], expected[1])
    assert not torch.equal(pair.cond, pair.uncond)
    assert encoder.device == torch.device("cpu")  # visited `device` (none asked here) and stayed home


def test_float16_load_casts_the_unet_only(lavie, sd1):
    half = LaVieBackend.load(str(lavie), sd1, dtype=torch.float16, allow_pickle=True)
    assert {p.dtype for p in half.unet.parameters()} == {torch.float16} and half.dtype == torch.float16
    assert half.encode_prompt("a fox", "").cond.dtype == torch.float16
    assert sd1.text_encoders[0].dtype == torch.float32  # the base's own modules are left as they are


def test_a_base_is_required_and_must_be_sd1(lavie, sd1):
    from lib_elevator.tiny.t2i import tiny_t2i

    message = error_of(load_t2v, str(lavie), allow_pickle=True)
    assert "needs a SD1.x base model for its text encoder and VAE" in message and "--t2v-base" in message
    message = error_of(LaVieBackend.load, str(lavie), tiny_t2i("sd2"), allow_pickle=True)
    assert "the base model tiny-sd2 is sd2" in message and str(lavie) in message


def test_a_base_whose_text_encoder_has_another_width_is_refused(sd1, tmp_path):
    from lib_elevator.tiny.lavie import tiny_lavie_unet

    config = {**TINY_LAVIE_UNET_CONFIG, "cross_attention_dim": 64}
    (tmp_path / "config.json").write_text(json.dumps(config))
    torch.save({"ema": tiny_lavie_unet(seed=3, config=config).file_state_dict()}, tmp_path / LAVIE_WEIGHTS_NAME)
    message = error_of(LaVieBackend.load, str(tmp_path), sd1, allow_pickle=True)
    assert "cross-attention takes 64-wide text embeddings" in message and "tiny-sd1 gives 32" in message


# ------------------------------------------------------------------------------ bad files


def test_truncated_files_are_named_truncated(lavie, sd1, tmp_path):
    folder = model_copy(lavie, tmp_path / "cut", weights=False)
    data = (lavie / LAVIE_WEIGHTS_NAME).read_bytes()
    (folder / LAVIE_WEIGHTS_NAME).write_bytes(data[: len(data) // 2])
    path = str(folder / LAVIE_WEIGHTS_NAME)
    for call, args in ((LaVieBackend.load, (path, sd1)), (detect_t2v_kind, (path,)), (detect_t2v_kind, (folder,))):
        message = error_of(call, *args, allow_pickle=True)
        assert "truncated or damaged" in message and path in message, message


def test_a_pickle_that_needs_more_than_tensors_is_refused_by_the_weights_only_loader(sd1, tmp_path):
    path = tmp_path / LAVIE_WEIGHTS_NAME
    state = {"down_blocks.0.attentions.0.transformer_blocks.0.attn_temp.rotary_emb.freqs": net.rope_frequencies()}
    torch.save({"ema": state, "args": argparse.Namespace(lr=1e-4)}, path)
    assert detect_t2v_kind(str(path), allow_pickle=True) == "lavie"  # its names are LaVie's
    message = error_of(LaVieBackend.load, str(path), sd1, allow_pickle=True)
    assert "holds more than tensors (it pickles argparse.Namespace)" in message
    assert "weights-only loader refuses" in message and str(path) in message


def test_a_config_that_does_not_fit_the_weights_names_keys_and_shapes(lavie, sd1, tmp_path):
    wider = model_copy(lavie, tmp_path / "wider", config=False)
    write_config(wider, block_out_channels=[64, 128, 128, 128])
    message = error_of(LaVieBackend.load, str(wider), sd1, allow_pickle=True)
    assert f"does not fit its config {wider / 'config.json'}:" in message
    assert "of another shape (e.g. down_blocks.1.attentions.0.norm.bias: (96,) in the file, (128,) in the config)" in (
        message
    )

    deeper = model_copy(lavie, tmp_path / "deeper", config=False)
    write_config(deeper, layers_per_block=3)
    message = error_of(LaVieBackend.load, str(deeper), sd1, allow_pickle=True)
    assert "missing (" in message and "unexpected (" not in message
    missing = message.split("missing (")[1].split(")")[0].split(", ")
    assert len(missing) == 4 and missing[-1] == "..."  # the first three, then "..."

    # Without a config.json the built-in (full-size) config applies, and the message says what would help.
    bare = model_copy(lavie, tmp_path / "bare", config=False)
    message = error_of(LaVieBackend.load, str(bare), sd1, allow_pickle=True)
    assert "does not fit the built-in LaVie base config" in message and "config.json beside the weights" in message

    # A config of another architecture, and the config of another model beside a LaVie file.
    linear = model_copy(lavie, tmp_path / "linear", config=False)
    write_config(linear, use_linear_projection=True)
    message = error_of(LaVieBackend.load, str(linear), sd1, allow_pickle=True)
    assert str(linear / "config.json") in message and "use_linear_projection=True is not supported" in message
    adapter = model_copy(lavie, tmp_path / "adapter", config=False)
    (adapter / "config.json").write_text(json.dumps({"_class_name": "MotionAdapter"}))
    message = error_of(LaVieBackend.load, str(adapter / LAVIE_WEIGHTS_NAME), sd1, allow_pickle=True)
    assert "describes a MotionAdapter, not LaVie's UNet" in message



def test_other_weights_and_wrong_rope_tables_are_refused(file_state, lavie, sd1, tmp_path):
    from safetensors.torch import save_file

    sd_unet = tmp_path / "unet.safetensors"
    save_file({k: v for k, v in file_state.items() if not net.is_temporal_key(k)}, str(sd_unet))
    assert "no temporal attention weights" in error_of(LaVieBackend.load, str(sd_unet), sd1)

    shifted = model_copy(lavie, tmp_path / "shifted", weights=False)
    key = next(k for k in file_state if k.endswith(net.ROPE_FREQS_SUFFIX))
    torch.save({"ema": {**file_state, key: file_state[key] * 1.01}}, shifted / LAVIE_WEIGHTS_NAME)
    message = error_of(LaVieBackend.load, str(shifted), sd1, allow_pickle=True)
    assert "RoPE frequencies differ" in message and key in message


def test_a_scheduler_config_keeps_lavies_betas_and_must_agree_on_the_rest(lavie, sd1, tmp_path):
    """SD 1.4's scheduler_config.json (scaled_linear betas) is accepted and its betas replaced by LaVie's, as
    the official code does; a step count or prediction type that contradicts LaVie is refused."""
    sd14 = {"_class_name": "PNDMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085,
            "beta_end": 0.012, "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True,
            "steps_offset": 1, "trained_betas": None, "clip_sample": False}
    folder = model_copy(lavie, tmp_path / "with_scheduler")
    (folder / "scheduler_config.json").write_text(json.dumps(sd14))
    loaded = LaVieBackend.load(str(folder), sd1, allow_pickle=True)
    assert torch.equal(loaded.alphas_cumprod, lavie_alphas_cumprod())
    for change, words in (({"num_train_timesteps": 2000}, "num_train_timesteps=2000"),
                          ({"prediction_type": "v_prediction"}, "prediction_type='v_prediction'")):
        (folder / "scheduler_config.json").write_text(json.dumps({**sd14, **change}))
        message = error_of(LaVieBackend.load, str(folder), sd1, allow_pickle=True)
        assert words in message and str(folder / "scheduler_config.json") in message


# ------------------------------------------------------------------------------ sampling maths


def test_the_table_is_linear_from_1e_4_to_0_02(backend):
    table = backend.alphas_cumprod
    assert table.dtype == torch.float64 and table.shape == (1000,)
    assert torch.equal(table, alphas_cumprod("linear", 1e-4, 0.02, 1000))
    expected = {281: 0.664, 481: 0.307, 681: 0.0946, 881: 0.0195}
    for t, root in expected.items():
        assert math.sqrt(table[t].item()) == pytest.approx(root, abs=6e-4)
    assert 1 - table[0].item() == pytest.approx(1e-4, rel=1e-3)  # betas are float32, as in diffusers
    assert math.sqrt(alphas_cumprod()[881].item()) > 0.13  # SD's scaled-linear table is far less noisy there


def test_runs_are_deterministic(backend, prompts):
    clean = latents(FRAMES, 4, SIZE, SIZE, seed=3)
    runs = [backend.denoise(clean, 481, [481, 461], prompts, 7.5, TorchNoise(7)) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.allclose(runs[0], backend.denoise(clean, 481, [481, 461], prompts, 7.5, TorchNoise(8)))


def by_diffusers_ddim(backend, clean, start, timesteps, prompts, guidance, seed, **betas):
    """SDEdit with diffusers' DDIMScheduler on LaVie's table: add_noise, then eta = 0 steps 20 apart."""
    from diffusers import DDIMScheduler

    betas = betas or {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02}
    scheduler = DDIMScheduler(num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=False, **betas)
    scheduler.set_timesteps(50)  # 1000 // 50 = 20 timesteps per step
    draw = TorchNoise(seed).randn(tuple(clean.shape))
    x = scheduler.add_noise(clean, draw, torch.tensor([start]))
    for t in timesteps:
        eps = backend.predict_noise(x, t, prompts, guidance)
        out = scheduler.step(eps, t, x, eta=0.0)
        x, prediction = out.prev_sample, out.pred_original_sample
    return prediction


def test_sdedit_is_ddim_on_lavies_table(backend, prompts):
    """The backend's SDEdit equals diffusers' DDIM on the linear 1e-4 -> 0.02 table (three guided steps with
    the tiny UNet); the same loop on SD's scaled-linear table is another result."""
    clean = latents(FRAMES, 4, SIZE, SIZE, seed=4)
    steps = [481, 461, 441]
    ours = backend.denoise(clean, 481, steps, prompts, 7.5, TorchNoise(11))
    reference = by_diffusers_ddim(backend, clean, 481, steps, prompts, 7.5, 11)
    assert (ours - reference).abs().max() <= 1e-4 * reference.abs().max()
    sd_table = by_diffusers_ddim(
        backend, clean, 481, steps, prompts, 7.5, 11, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012
    )
    assert (sd_table - reference).abs().max() > 0.05 * reference.abs().max()


# ------------------------------------------------------------------------------ conversion


def test_convert_round_trip_in_float32(lavie, backend, prompts, sd1, tmp_path, capsys):
    from safetensors import safe_open

    source = model_copy(lavie, tmp_path / "source")
    out = tmp_path / "converted" / "lavie.safetensors"
    assert main(["convert", str(source), "--out", str(out), "--dtype", "float32"]) == 2
    assert "add --allow-pickle" in capsys.readouterr().err
    assert main(["convert", str(source), "--out", str(out), "--dtype", "float32", "--allow-pickle"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert sorted(os.listdir(out.parent)) == ["config.json", "lavie.safetensors"]  # the config travels along
    with safe_open(str(out), framework="pt") as f:
        keys = set(f.keys())
        assert f.metadata()["model"] == "lavie"
    assert keys == set(backend.unet.state_dict()) and len(keys) == 814
    for path in (out, out.parent):  # no opt-in needed now
        assert detect_t2v_kind(str(path)) == "lavie"
    converted = load_t2v(str(out), base=sd1)
    assert torch.equal(unet_out(converted, prompts), unet_out(backend, prompts))


def test_convert_defaults_to_float16_beside_the_checkpoint(lavie, backend, prompts, sd1, tmp_path, capsys):
    from safetensors import safe_open

    folder = model_copy(lavie, tmp_path / "fp16")
    assert main(["convert", str(folder), "--allow-pickle"]) == 0
    out = folder / "lavie_base.fp16.safetensors"
    assert capsys.readouterr().out.strip() == str(out)
    with safe_open(str(out), framework="pt") as f:
        assert f.get_tensor("conv_out.weight").dtype == torch.float16
    # The folder now loads from the safetensors, without the opt-in, in the working dtype asked for.
    assert detect_t2v_kind(str(folder)) == "lavie"
    half = load_t2v(str(folder), base=sd1)
    assert half.unet.conv_out.weight.dtype == torch.float32
    expected = unet_out(backend, prompts)
    assert (unet_out(half, prompts) - expected).abs().max() < 2e-2 * expected.abs().max()
    assert main(["convert", str(folder)]) == 2
    assert "already a .safetensors file: there is nothing to convert" in capsys.readouterr().err


def test_convert_refuses_to_overwrite_another_config(lavie, tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="exists and differs"):
        convert_checkpoint(str(lavie), str(target / "lavie.safetensors"), allow_pickle=True)
    assert os.listdir(target) == ["config.json"]


# ------------------------------------------------------------------------------ preset and end to end


def test_the_preset_is_the_authors_lavie_setting_and_fits_lavies_table():
    from lib_elevator.elevator import plan_refinement
    from lib_elevator.schedule import ddim_schedule

    assert PRESETS["LaVie-like"] == dict(refine_points="45,35,30,25,20,15", t2v_steps=8, t2v_guidance=7.5,
                                         noise_mix=1.0, filter_method="gaussian", filter_spatial=1.0,
                                         filter_temporal=0.5)
    assert PRESET_STEPS["LaVie-like"] == 50
    settings = Settings().with_preset("LaVie-like").validate()
    sd_table = alphas_cumprod()
    plan = plan_refinement(settings, ddim_schedule(sd_table, 50), sd_table, lavie_alphas_cumprod())
    assert plan.refine_at == (5, 15, 20, 25, 30, 35)
    assert all(len(steps) == 8 and min(steps) >= 0 for steps in plan.t2v_timesteps.values())


@pytest.fixture(scope="module")
def t2i_folders(model_cache):
    from lib_elevator.tiny.t2i import build_tiny_t2i_folder

    folders = {}
    for kind in ("sd1", "sd2"):
        folder = model_cache / f"lavie-e2e-{kind}"
        if not (folder / "model_index.json").exists():
            build_tiny_t2i_folder(str(folder), kind=kind)
        folders[kind] = str(folder)
    return folders


def test_end_to_end_from_the_command_line(lavie, t2i_folders, tmp_path, capsys):
    args = ["generate", "--t2v", str(lavie), "--prompt", "a lighthouse", "--preset", "LaVie-like", *FAST]
    sd1 = ["--t2i", t2i_folders["sd1"]]
    assert main([*args, *sd1, "--out", str(tmp_path / "refused.png")]) == 2
    assert "holds pickled weights" in capsys.readouterr().err
    assert main([*args, *sd1, "--allow-pickle", "--out", str(tmp_path / "v.png")]) == 0
    assert "'t2v': 4" in capsys.readouterr().err  # two refine points, two T2V steps each
    assert len(os.listdir(tmp_path / "v-frames")) == 4
    # A T2I model that is not SD1.x supplies no text encoder for LaVie: refused, unless --t2v-base names one.
    sd2 = ["--t2i", t2i_folders["sd2"], "--allow-pickle"]
    assert main([*args, *sd2, "--out", str(tmp_path / "no_base.png")]) == 2
    assert "needs a SD1.x base model for its text encoder and VAE" in capsys.readouterr().err
    assert main([*args, *sd2, "--t2v-base", t2i_folders["sd1"], "--out", str(tmp_path / "based.png")]) == 0
    assert "'t2v': 4" in capsys.readouterr().err


def test_the_webui_plugs_the_loaded_sd1_checkpoint_in(lavie, tmp_path):
    """lib_elevator/webui/models.py, unchanged: a LaVie model in models/VideoElevator loads with the text
    encoder and VAE of the SD1.x checkpoint loaded in the WebUI (a single file, as the WebUI has it)."""
    import host_stub

    from lib_elevator.settings import SettingsError
    from lib_elevator.tiny.t2i import write_tiny_single_file

    checkpoint = write_tiny_single_file(str(tmp_path / "sd" / "dreamy.safetensors"), "sd1")
    with host_stub.installed(tmp_path) as webui:
        models = webui.adapter("models")
        model_copy(lavie, tmp_path / "models" / "VideoElevator" / "LaVie")
        webui.shared.opts.data["videoelevator_allow_pickle"] = True
        entry = models.resolve("LaVie")
        assert entry["kind"] == "lavie"
        webui.shared.sd_model = SimpleNamespace(is_sd1=False, sd_checkpoint_info=SimpleNamespace(filename="x"))
        with pytest.raises(SettingsError, match="from the loaded checkpoint, which must be SD1.x"):
            models.get_t2v(entry)
        webui.shared.sd_model = SimpleNamespace(is_sd1=True, sd_checkpoint_info=SimpleNamespace(filename=checkpoint))
        loaded = models.get_t2v(entry)
        assert isinstance(loaded, LaVieBackend) and models.get_t2v(entry) is loaded
        assert loaded.text_encoder.config.hidden_size == 32 and loaded.vae is not None
        assert loaded.encode_prompt("a fox", "").cond.shape == (1, 77, 32)
        models.unload()
