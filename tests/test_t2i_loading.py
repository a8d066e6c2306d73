"""T2I loading: diffusers folders and original single files round-trip to the in-memory tiny models,
tokenizers, LoRA merging, and the errors bad inputs give."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from safetensors.torch import save_file

from lib_elevator.errors import ModelError
from lib_elevator.loaders import (
    SD2_ORIGINAL,
    STANDARD_SCHEDULER,
    checkpoint_kind,
    load_t2i,
    original_prediction_type,
)
from lib_elevator.lora import merge_lora, original_unet_names, plan_lora
from lib_elevator.tiny.t2i import build_tiny_t2i_folder, original_weights, tiny_t2i, write_tiny_single_file
from lib_elevator.tokenizer import has_clip_vocabulary

PROMPT = "a photo of a cat"
CLIP_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]
TEXT_WIDTH = 32


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="session")
def reference():
    """The in-memory tiny models every file is written from (seed 0)."""
    cache = {}

    def get(kind: str):
        if kind not in cache:
            cache[kind] = tiny_t2i(kind, seed=0)
        return cache[kind]

    return get


@pytest.fixture(scope="session")
def folder(model_cache):
    def get(kind: str) -> str:
        path = os.path.join(model_cache, f"folder-{kind}")
        if not os.path.exists(path):
            build_tiny_t2i_folder(path, kind)
        return path

    return get


@pytest.fixture(scope="session")
def single_file(model_cache):
    def get(kind: str, v_prediction: bool = False) -> str:
        path = os.path.join(model_cache, f"file-{kind}{'-v' if v_prediction else ''}", "tiny.safetensors")
        if not os.path.exists(path):
            write_tiny_single_file(path, kind, v_prediction=v_prediction)
        return path

    return get


def latents(rows: int = 1) -> torch.Tensor:
    return torch.randn(rows, 4, 8, 8, generator=torch.Generator().manual_seed(1))


def assert_same_model(loaded, ref):
    """Same conditioning from the same prompt, same UNet output, same VAE decode."""
    assert loaded.kind == ref.kind
    got, want = loaded.encode_prompt(PROMPT, 64, 64), ref.encode_prompt(PROMPT, 64, 64)
    torch.testing.assert_close(got.context, want.context, atol=1e-5, rtol=1e-5)
    assert got.added.keys() == want.added.keys()
    for key in want.added:
        torch.testing.assert_close(got.added[key], want.added[key], atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        out = loaded.model_output(latents(), 400.0, want)
        torch.testing.assert_close(out, ref.model_output(latents(), 400.0, want), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(loaded.decode(latents()), ref.decode(latents()), atol=1e-5, rtol=1e-5)


def assert_same_weights(loaded, ref):
    """Cheaper than outputs where the round trip itself is tested elsewhere: every tensor equal."""
    assert loaded.kind == ref.kind
    for got, want in zip([loaded.unet, loaded.vae, *loaded.text_encoders], [ref.unet, ref.vae, *ref.text_encoders]):
        got_state, want_state = got.state_dict(), want.state_dict()
        assert got_state.keys() == want_state.keys()
        assert all(torch.equal(got_state[k], want_state[k]) for k in want_state)


# ------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("kind", ["sd1", "sd2", "sdxl"])
def test_folder_round_trip(kind, folder, reference):
    loaded = load_t2i(folder(kind))
    assert_same_model(loaded, reference(kind))
    assert len(loaded.text_encoders) == (2 if kind == "sdxl" else 1)
    assert loaded.scheduler_config == {k: reference(kind).scheduler_config[k] for k in STANDARD_SCHEDULER}


@pytest.mark.parametrize("kind", ["sd1", "sd2", "sdxl"])
def test_single_file_round_trip(kind, single_file, reference):
    loaded = load_t2i(single_file(kind))
    assert_same_model(loaded, reference(kind))
    assert loaded.prediction_type == "epsilon"
    assert loaded.latent_space.scaling_factor == reference(kind).latent_space.scaling_factor


def test_sdxl_second_encoder_has_projection(single_file, folder):
    for path in (single_file("sdxl"), folder("sdxl")):
        encoders = load_t2i(path).text_encoders
        assert type(encoders[0]).__name__ == "CLIPTextModel"
        assert type(encoders[1]).__name__ == "CLIPTextModelWithProjection"


def test_sd2_drops_the_unused_last_openclip_layer(single_file, reference):
    """The file holds one resblock more than the model conditions on (SD2's penultimate layer)."""
    loaded = load_t2i(single_file("sd2"))
    assert (
        loaded.text_encoders[0].config.num_hidden_layers == reference("sd2").text_encoders[0].config.num_hidden_layers
    )


def test_v_prediction_from_yaml(single_file):
    loaded = load_t2i(single_file("sd2", v_prediction=True))
    assert loaded.prediction_type == "v_prediction"
    assert loaded.scheduler_config["prediction_type"] == "v_prediction"


def test_scheduler_config_of_single_file(single_file):
    config = load_t2i(single_file("sd1")).scheduler_config
    assert config == STANDARD_SCHEDULER
    assert config["timestep_spacing"] == "leading" and config["steps_offset"] == 1


def test_yaml_beside_the_file_is_what_describes_it(single_file, tmp_path, reference):
    source = single_file("sd1")
    lonely = str(tmp_path / "renamed.safetensors")
    shutil.copy(source, lonely)
    # Without its yaml the tiny file is read as a standard SD1.5, whose shapes it does not have.
    with pytest.raises(ValueError, match="renamed.safetensors"):
        load_t2i(lonely)
    yaml_path = os.path.splitext(source)[0] + ".yaml"
    assert_same_weights(load_t2i(lonely, config_file=yaml_path), reference("sd1"))
    shutil.copy(yaml_path, tmp_path / "renamed.yaml")  # the WebUI convention: same stem
    assert_same_weights(load_t2i(lonely), reference("sd1"))


def test_device_and_dtype(single_file):
    loaded = load_t2i(single_file("sd1"), dtype=torch.float64)
    assert loaded.dtype == torch.float64
    assert all(p.dtype == torch.float64 for m in [loaded.vae, *loaded.text_encoders] for p in m.parameters())
    assert loaded.device.type == "cpu"


def test_pickled_checkpoint_only_by_opt_in(single_file, tmp_path, reference):
    path = str(tmp_path / "tiny.ckpt")
    torch.save({"state_dict": original_weights(reference("sd1")), "global_step": 1}, path)
    shutil.copy(os.path.splitext(single_file("sd1"))[0] + ".yaml", tmp_path / "tiny.yaml")
    with pytest.raises(ValueError, match=r"tiny\.ckpt.*safetensors.*allow_pickle"):
        load_t2i(path)
    assert_same_weights(load_t2i(path, allow_pickle=True), reference("sd1"))


# ------------------------------------------------------------------------------ kind and naming facts
def test_kind_from_checkpoint_keys(reference):
    for kind in ("sd1", "sd2", "sdxl"):
        assert checkpoint_kind(original_weights(reference(kind)), "x.safetensors") == kind


def test_sd2_prediction_heuristic_without_yaml():
    assert original_prediction_type(SD2_ORIGINAL, "sd2", None, has_yaml=False) == "v_prediction"
    assert original_prediction_type(SD2_ORIGINAL, "sd2", 875000, has_yaml=False) == "epsilon"


def test_original_unet_names_of_the_real_layouts():
    """Names from the real SD1.5 and SDXL checkpoints, on full-size UNets built without weights."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import create_unet_diffusers_config_from_ldm

    from lib_elevator.loaders import SD1_ORIGINAL, SDXL_ORIGINAL

    with torch.device("meta"):
        sd15 = UNet2DConditionModel(**create_unet_diffusers_config_from_ldm(SD1_ORIGINAL, {}))
        sdxl_config = create_unet_diffusers_config_from_ldm(SDXL_ORIGINAL, {})
        sdxl = UNet2DConditionModel(**sdxl_config)
    names = original_unet_names(sd15)
    assert names["down_blocks.0.resnets.0.conv1"] == "input_blocks.1.0.in_layers.2"
    assert names["down_blocks.0.downsamplers.0.conv"] == "input_blocks.3.0.op"
    assert names["down_blocks.1.attentions.1.proj_in"] == "input_blocks.5.1.proj_in"
    assert (
        names["mid_block.attentions.0.transformer_blocks.0.attn2.to_k"]
        == "middle_block.1.transformer_blocks.0.attn2.to_k"
    )
    assert names["up_blocks.0.upsamplers.0.conv"] == "output_blocks.2.1.conv"  # no attention at the lowest level
    assert names["up_blocks.1.upsamplers.0.conv"] == "output_blocks.5.2.conv"
    assert names["up_blocks.3.resnets.2.conv_shortcut"] == "output_blocks.11.0.skip_connection"
    assert names["conv_out"] == "out.2"
    names = original_unet_names(sdxl)
    assert (
        names["down_blocks.1.attentions.0.transformer_blocks.1.attn1.to_q"]
        == "input_blocks.4.1.transformer_blocks.1.attn1.to_q"
    )
    assert names["down_blocks.2.attentions.1.proj_out"] == "input_blocks.8.1.proj_out"
    assert names["up_blocks.0.upsamplers.0.conv"] == "output_blocks.2.2.conv"
    assert names["add_embedding.linear_1"] == "label_emb.0.0"


# ------------------------------------------------------------------------------ tokenizers
@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_tokenizers(kind, single_file, folder):
    for path in (single_file(kind), folder(kind)):
        tokenizers = load_t2i(path).tokenizers
        assert has_clip_vocabulary()  # open_clip_torch is in requirements.txt and the dev venv
        for tokenizer in tokenizers:
            assert tokenizer(PROMPT).input_ids == CLIP_IDS
        # SDXL's second (OpenCLIP) tokenizer pads with "!" as open_clip does.
        assert [t.pad_token for t in tokenizers] == (["<|endoftext|>", "!"] if kind == "sdxl" else ["<|endoftext|>"])


def test_sd2_tokenizer_pads_with_exclamation_mark(single_file, folder):
    for path in (single_file("sd2"), folder("sd2")):
        assert load_t2i(path).tokenizers[0].pad_token == "!"


def test_tokenizer_dir_for_single_files(single_file, tmp_path):
    from lib_elevator.tokenizer import clip_tokenizer

    tokenizer_dir = str(tmp_path / "tok")
    clip_tokenizer().save_pretrained(tokenizer_dir)
    loaded = load_t2i(single_file("sd1"), tokenizer_dir=tokenizer_dir)
    assert loaded.tokenizers[0].name_or_path == tokenizer_dir


def test_no_tokenizer_without_clips_vocabulary(single_file, monkeypatch, tmp_path):
    """A single file carries no tokenizer: without CLIP's vocabulary (open_clip_torch) loading stops
    and names both fixes, instead of tokenising with some other vocabulary."""
    import shutil

    from lib_elevator import tokenizer

    source = single_file("sd1")
    copy = tmp_path / "copy"
    shutil.copytree(os.path.dirname(source), copy)
    path = str(copy / os.path.basename(source))
    for name in ("vocab.json", "merges.txt"):  # the text-encoder folder the yaml names keeps only its config
        os.remove(os.path.splitext(path)[0] + "-text-encoder/" + name)
    yaml_path = os.path.splitext(path)[0] + ".yaml"
    with open(yaml_path) as f:
        text = f.read().replace(os.path.dirname(source) + os.sep, "")  # the yaml names the copy's folder
    with open(yaml_path, "w") as f:
        f.write(text)
    monkeypatch.setattr(tokenizer, "open_clip_bpe_path", lambda: None)
    tokenizer._builtin_tokenizer_folder.cache_clear()
    try:
        with pytest.raises(ModelError, match=r"open_clip_torch.*--tokenizer DIR"):
            load_t2i(path)
    finally:
        tokenizer._builtin_tokenizer_folder.cache_clear()


def test_a_tokenizer_of_another_vocabulary_is_refused(single_file, tmp_path):
    """The 49,408-token text encoder is never paired with another vocabulary."""
    from lib_elevator.tokenizer import bytes_to_unicode, write_tokenizer_files

    base = list(bytes_to_unicode().values())
    tokens = base + [t + "</w>" for t in base] + ["<|startoftext|>", "<|endoftext|>"]
    small = write_tokenizer_files(str(tmp_path / "bytes"), {t: i for i, t in enumerate(tokens)}, [])
    with pytest.raises(ModelError, match=r"has 514 tokens but the text encoder embeds 49408"):
        load_t2i(single_file("sd1"), tokenizer_dir=small)


# ------------------------------------------------------------------------------ sampling on loaded models
@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_encode_prompt_and_denoiser_on_loaded_models(kind, single_file):
    model = load_t2i(single_file(kind))
    cond = model.encode_prompt(PROMPT, 64, 64)
    width = 2 * TEXT_WIDTH if kind == "sdxl" else TEXT_WIDTH
    assert cond.context.shape == (1, 77, width)
    if kind == "sdxl":
        assert cond.added["text_embeds"].shape == (1, TEXT_WIDTH)
        assert cond.added["time_ids"].shape == (1, 6)
    with torch.no_grad():
        denoised = model.denoiser(cond.repeat(2))(latents(2) * 3.0, 3.0)
    assert denoised.shape == (2, 4, 8, 8) and torch.isfinite(denoised).all()
    assert model.decode(denoised).shape == (2, 64, 64, 3)


# ------------------------------------------------------------------------------ LoRA
def lora_factors(out_features: int, in_shape: tuple, rank: int, seed: int):
    """(down, up) factors for a layer with `out_features` outputs and weight shape (out, *in_shape)."""
    g = torch.Generator().manual_seed(seed)
    down = torch.randn(rank, *in_shape, generator=g)
    up = torch.randn(out_features, rank, *([1] * (len(in_shape) - 1)), generator=g)
    return down, up


def expected_delta(down, up, shape):
    return (up.flatten(1) @ down.flatten(1)).reshape(shape)


def layer_weight(model, root: str, name: str) -> torch.Tensor:
    modules = {"unet": model.unet, "text_encoder": model.text_encoders[0]}
    if len(model.text_encoders) > 1:
        modules["text_encoder_2"] = model.text_encoders[1]
    return modules[root].get_submodule(name).weight


def write_kohya_lora(path, model, targets: dict[str, tuple[str, str]], rank=2, alpha=1.0):
    """targets: kohya name -> (root, diffusers layer name). Returns {(root, layer): delta at weight 1}."""
    tensors, deltas = {}, {}
    for i, (kohya, (root, name)) in enumerate(targets.items()):
        weight = layer_weight(model, root, name)
        down, up = lora_factors(weight.shape[0], tuple(weight.shape[1:]), rank, seed=i)
        tensors[f"{kohya}.lora_down.weight"], tensors[f"{kohya}.lora_up.weight"] = down, up
        tensors[f"{kohya}.alpha"] = torch.tensor(alpha)
        deltas[(root, name)] = alpha / rank * expected_delta(down, up, weight.shape)
    save_file(tensors, str(path))
    return deltas


def assert_only_targets_changed(before: dict, after, deltas: dict, weight: float):
    changed = {
        (root, name.removesuffix(".weight"))
        for root, name in before
        if not torch.equal(before[(root, name)], after[(root, name)])
    }
    assert changed == set(deltas)
    for (root, name), delta in deltas.items():
        key = (root, name + ".weight")
        torch.testing.assert_close(after[key], before[key] + weight * delta, atol=1e-5, rtol=1e-5)


def all_weights(model) -> dict:
    weights = {("unet", k): v.clone() for k, v in model.unet.state_dict().items()}
    for root, encoder in zip(("text_encoder", "text_encoder_2"), model.text_encoders):
        weights.update({(root, k): v.clone() for k, v in encoder.state_dict().items()})
    return weights


def test_kohya_lora_sd1_linear_and_conv_layers(tmp_path):
    model = tiny_t2i("sd1")
    targets = {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": ("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"),
        "lora_unet_down_blocks_0_attentions_0_proj_in": ("unet", "down_blocks.0.attentions.0.proj_in"),  # 1x1 conv
        "lora_unet_up_blocks_1_resnets_0_conv1": ("unet", "up_blocks.1.resnets.0.conv1"),  # 3x3 conv
        "lora_te_text_model_encoder_layers_1_self_attn_v_proj": ("text_encoder", "text_model.encoder.layers.1.self_attn.v_proj"),
    }  # fmt: skip
    deltas = write_kohya_lora(tmp_path / "lora.safetensors", model, targets, rank=2, alpha=1.0)
    before = all_weights(model)
    roots = {"unet": model.unet, "text_encoder": model.text_encoders[0]}
    assert merge_lora(roots, str(tmp_path / "lora.safetensors"), weight=0.7) == 4
    assert_only_targets_changed(before, all_weights(model), deltas, 0.7)


def test_kohya_lora_sdxl_original_unet_names(tmp_path):
    """SDXL LoRAs from kohya name UNet layers the sgm way (input_blocks…); both text encoders."""
    model = tiny_t2i("sdxl")
    targets = {
        "lora_unet_input_blocks_3_1_transformer_blocks_1_attn2_to_k": ("unet", "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k"),
        "lora_unet_output_blocks_0_0_in_layers_2": ("unet", "up_blocks.0.resnets.0.conv1"),
        "lora_unet_middle_block_1_proj_out": ("unet", "mid_block.attentions.0.proj_out"),
        "lora_te1_text_model_encoder_layers_0_mlp_fc1": ("text_encoder", "text_model.encoder.layers.0.mlp.fc1"),
        "lora_te2_text_model_encoder_layers_1_self_attn_out_proj": ("text_encoder_2", "text_model.encoder.layers.1.self_attn.out_proj"),
    }  # fmt: skip
    deltas = write_kohya_lora(tmp_path / "xl.safetensors", model, targets, rank=4, alpha=8.0)
    before = all_weights(model)
    roots = {"unet": model.unet, "text_encoder": model.text_encoders[0], "text_encoder_2": model.text_encoders[1]}
    assert merge_lora(roots, str(tmp_path / "xl.safetensors")) == 5
    assert_only_targets_changed(before, all_weights(model), deltas, 1.0)


def test_peft_and_diffusers_lora_formats(tmp_path):
    model = tiny_t2i("sd1")
    unet_layer = "up_blocks.0.attentions.1.transformer_blocks.0.attn2.to_v"
    te_layer = "text_model.encoder.layers.0.self_attn.k_proj"
    w_unet, w_te = layer_weight(model, "unet", unet_layer), layer_weight(model, "text_encoder", te_layer)
    down_a, up_a = lora_factors(w_unet.shape[0], tuple(w_unet.shape[1:]), 3, seed=5)
    down_b, up_b = lora_factors(w_te.shape[0], tuple(w_te.shape[1:]), 2, seed=6)
    tensors = {
        f"unet.{unet_layer}.lora_A.weight": down_a,
        f"unet.{unet_layer}.lora_B.weight": up_a,
        f"text_encoder.{te_layer}.lora.down.weight": down_b,
        f"text_encoder.{te_layer}.lora.up.weight": up_b,
        "unet.not_a_layer.lora_A.weight": torch.zeros(1, 1),  # counted as unmatched, not fatal
    }
    save_file(tensors, str(tmp_path / "peft.safetensors"))
    before = all_weights(model)
    roots = {"unet": model.unet, "text_encoder": model.text_encoders[0]}
    assert len(plan_lora(roots, tensors).unmatched) == 1
    assert merge_lora(roots, str(tmp_path / "peft.safetensors"), weight=0.5) == 2
    # No alpha in peft files: alpha = rank, so the scale is the weight.
    deltas = {
        ("unet", unet_layer): expected_delta(down_a, up_a, w_unet.shape),
        ("text_encoder", te_layer): expected_delta(down_b, up_b, w_te.shape),
    }
    assert_only_targets_changed(before, all_weights(model), deltas, 0.5)


def test_old_diffusers_processor_format_without_prefix(tmp_path):
    """Old diffusers UNet LoRAs: `<block>.processor.to_out_lora.down.weight`, no "unet." prefix."""
    model = tiny_t2i("sd1")
    block = "down_blocks.1.attentions.0.transformer_blocks.0.attn1"
    layer = block + ".to_out.0"
    weight = layer_weight(model, "unet", layer)
    down, up = lora_factors(weight.shape[0], tuple(weight.shape[1:]), 2, seed=7)
    tensors = {f"{block}.processor.to_out_lora.down.weight": down, f"{block}.processor.to_out_lora.up.weight": up}
    save_file(tensors, str(tmp_path / "proc.safetensors"))
    before = all_weights(model)
    assert merge_lora({"unet": model.unet}, str(tmp_path / "proc.safetensors")) == 1
    assert_only_targets_changed(
        before, all_weights(model), {("unet", layer): expected_delta(down, up, weight.shape)}, 1.0
    )


def test_lora_into_a_motion_unet(tmp_path):
    """Names resolve against whatever tree is given: a UNetMotionModel's spatial and motion layers."""
    from diffusers import UNetMotionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNetMotionModel(
            block_out_channels=(32, 64),
            layers_per_block=1,
            cross_attention_dim=TEXT_WIDTH,
            down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
            up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion"),
            motion_max_seq_length=8,
            motion_num_attention_heads=2,
        )
    targets = {
        "lora_unet_input_blocks_1_1_proj_in": "down_blocks.0.attentions.0.proj_in",  # original name
        "lora_unet_down_blocks_0_motion_modules_0_proj_in": "down_blocks.0.motion_modules.0.proj_in",
    }
    tensors, before = {}, {}
    for i, (kohya, name) in enumerate(targets.items()):
        weight = unet.get_submodule(name).weight
        down, up = lora_factors(weight.shape[0], tuple(weight.shape[1:]), 2, seed=i)
        tensors[f"{kohya}.lora_down.weight"], tensors[f"{kohya}.lora_up.weight"] = down, up
        before[name] = weight.detach().clone() + expected_delta(down, up, weight.shape)
    save_file(tensors, str(tmp_path / "motion.safetensors"))
    assert merge_lora({"unet": unet}, str(tmp_path / "motion.safetensors")) == 2
    for name, expected in before.items():
        torch.testing.assert_close(unet.get_submodule(name).weight, expected)


def test_lora_with_wrong_shapes_changes_nothing(tmp_path):
    model = tiny_t2i("sd1")
    tensors = {
        "lora_unet_conv_in.lora_down.weight": torch.ones(2, 4, 3, 3),  # fits
        "lora_unet_conv_in.lora_up.weight": torch.ones(32, 2, 1, 1),
        "lora_unet_conv_out.lora_down.weight": torch.ones(2, 7),  # does not
        "lora_unet_conv_out.lora_up.weight": torch.ones(4, 2),
    }
    save_file(tensors, str(tmp_path / "bad.safetensors"))
    before = all_weights(model)
    with pytest.raises(ValueError, match=r"bad\.safetensors.*conv_out"):
        merge_lora({"unet": model.unet}, str(tmp_path / "bad.safetensors"))
    after = all_weights(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_load_t2i_merges_loras(single_file, tmp_path, reference):
    targets = {
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_2": (
            "unet",
            "mid_block.attentions.0.transformer_blocks.0.ff.net.2",
        )
    }
    deltas = write_kohya_lora(tmp_path / "l.safetensors", reference("sd1"), targets, rank=2, alpha=2.0)
    loaded = load_t2i(single_file("sd1"), loras=[(str(tmp_path / "l.safetensors"), 0.25)])
    assert_only_targets_changed(all_weights(reference("sd1")), all_weights(loaded), deltas, 0.25)


def test_lora_that_matches_nothing_names_the_file(single_file, tmp_path):
    tensors = {
        "lora_unet_no_such_layer.lora_down.weight": torch.zeros(2, 4),
        "lora_unet_no_such_layer.lora_up.weight": torch.zeros(4, 2),
    }
    save_file(tensors, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(ValueError, match="wrong.safetensors"):
        load_t2i(single_file("sd1"), loras=[(str(tmp_path / "wrong.safetensors"), 1.0)])
    # An SDXL second-encoder LoRA has nothing to change in an SD1 model either.
    save_file(
        {"lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(2, 32)},
        str(tmp_path / "xl.safetensors"),
    )
    with pytest.raises(ValueError, match="xl.safetensors"):
        load_t2i(single_file("sd1"), loras=[(str(tmp_path / "xl.safetensors"), 1.0)])
    with pytest.raises(ModelError, match="absent.safetensors"):
        load_t2i(single_file("sd1"), loras=[(str(tmp_path / "absent.safetensors"), 1.0)])


# ------------------------------------------------------------------------------ errors name the path
def test_missing_path(tmp_path):
    with pytest.raises(ModelError, match="nowhere"):
        load_t2i(str(tmp_path / "nowhere"))


def test_folder_without_model_index_or_unet(folder, tmp_path):
    broken = tmp_path / "no-index"
    shutil.copytree(folder("sd1"), broken)
    os.remove(broken / "model_index.json")
    with pytest.raises(ModelError, match=r"no-index.*model_index\.json"):
        load_t2i(str(broken))
    no_unet = tmp_path / "no-unet"
    shutil.copytree(folder("sd1"), no_unet)
    shutil.rmtree(no_unet / "unet")
    with pytest.raises(ModelError, match=r"no-unet.*unet"):
        load_t2i(str(no_unet))


def test_folder_with_only_pickled_weights(folder, tmp_path):
    pickled = tmp_path / "pickled"
    shutil.copytree(folder("sd1"), pickled)
    vae = pickled / "vae"
    from safetensors.torch import load_file

    torch.save(load_file(str(vae / "diffusion_pytorch_model.safetensors")), vae / "diffusion_pytorch_model.bin")
    os.remove(vae / "diffusion_pytorch_model.safetensors")
    with pytest.raises(ValueError, match=r"pickled.*vae.*allow_pickle"):
        load_t2i(str(pickled))
    assert load_t2i(str(pickled), allow_pickle=True).kind == "sd1"


@pytest.mark.parametrize("name", ["notes.txt", "config.json"])
def test_file_that_is_not_a_checkpoint(tmp_path, name):
    path = tmp_path / name
    path.write_text("{}")
    with pytest.raises(ValueError, match=name.replace(".", r"\.") + ".*not a model checkpoint"):
        load_t2i(str(path))


def test_damaged_safetensors(tmp_path):
    path = tmp_path / "damaged.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(ValueError, match="damaged.safetensors"):
        load_t2i(str(path))


def test_config_file_that_is_not_a_model_config(single_file, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("just: a list\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*unet_config"):
        load_t2i(single_file("sd1"), config_file=str(bad))
    with pytest.raises(ModelError, match="absent.yaml"):
        load_t2i(single_file("sd1"), config_file=str(tmp_path / "absent.yaml"))


def test_yaml_naming_a_missing_text_encoder_folder(single_file, tmp_path):
    import yaml

    with open(os.path.splitext(single_file("sd1"))[0] + ".yaml", encoding="utf-8") as f:
        config = yaml.safe_load(f)
    config["model"]["params"]["cond_stage_config"]["params"]["version"] = str(tmp_path / "gone")
    (tmp_path / "moved.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ModelError, match=r"moved\.yaml.*gone"):
        load_t2i(single_file("sd1"), config_file=str(tmp_path / "moved.yaml"))


def test_checkpoint_of_unknown_architecture(tmp_path):
    path = tmp_path / "unknown.safetensors"
    save_file({"encoder.layer.0.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(ValueError, match=r"unknown\.safetensors.*no known architecture"):
        load_t2i(str(path))
