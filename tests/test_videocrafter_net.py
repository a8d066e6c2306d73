"""VideoCrafter2 networks (lib_elevator/t2v/videocrafter_net.py) and the tiny checkpoint writer: key
layout at full size on the meta device, schedule maths, temporal behaviour and tokenisation.

The official code itself is not run here (it needs pytorch-lightning, kornia and stand-ins for
torchvision/cv2); docs/t2v-equivalence.md describes that side-by-side comparison. The exact token
ids below were produced by open_clip.tokenize (open_clip_torch 2.22.0)."""

from __future__ import annotations

import math
import re

import pytest
import torch

from lib_elevator.t2v import videocrafter_net as vc
from lib_elevator.tiny import videocrafter as tiny

FRAMES, SIZE = 4, 8


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_state():
    return tiny.tiny_videocrafter_state(seed=0)


def part(state: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


@pytest.fixture(scope="module")
def unet(tiny_state):
    model = vc.VideoCrafterUNet(tiny.TINY_UNET_PARAMS).eval()
    model.load_state_dict(part(tiny_state, vc.UNET_PREFIX), strict=True)
    return model


@pytest.fixture(scope="module")
def text_tower(tiny_state):
    tower = vc.OpenCLIPTextTower(vc.text_config_from_open_clip(tiny.TINY_OPEN_CLIP_CONFIG)).eval()
    tower.load_state_dict(part(tiny_state, vc.TEXT_PREFIX), strict=True)
    return tower


@pytest.fixture(scope="module")
def full_unet_state():
    with torch.device("meta"):
        return vc.VideoCrafterUNet().state_dict()


def run(model, x, t=501, context=None, fps=28):
    context = (
        torch.randn(x.shape[0], 77, 64, generator=torch.Generator().manual_seed(5)) if context is None else context
    )
    with torch.no_grad():
        return model(x, t, context, fps)


def latents(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


# ------------------------------------------------------------------------------ full-size layout

TEMPORAL_SLOT = re.compile(r"^(input_blocks\.\d+|output_blocks\.\d+|middle_block)\.2\.")


def kind(key: str) -> str:
    if ".temopral_conv." in key:
        return "temporal_conv"
    if key.startswith("init_attn.") or TEMPORAL_SLOT.match(key):
        return "temporal_transformer"
    if key.startswith("fps_embedding."):
        return "fps"
    return "spatial"


def sd2_name(key: str) -> str:
    """VC2 spatial key -> SD 2.x ldm key: the inserted temporal transformer shifts three indices."""
    key = re.sub(r"^middle_block\.3\.", "middle_block.2.", key)
    return re.sub(r"^output_blocks\.(5|8)\.3\.conv\.", r"output_blocks.\1.2.conv.", key)


def sd2_unet_config(widths: list[int], head_channels: int, context_dim: int) -> dict:
    """diffusers UNet2DConditionModel kwargs of an SD 2.x-shaped UNet (as stable-diffusion-2-1-base's
    unet/config.json at full size: attention_head_dim there means heads per level)."""
    return {
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
        "block_out_channels": widths,
        "layers_per_block": 2,
        "attention_head_dim": [w // head_channels for w in widths],
        "cross_attention_dim": context_dim,
        "use_linear_projection": True,
    }


def test_full_size_unet_key_counts(full_unet_state):
    def count(which):
        tensors = [v for k, v in full_unet_state.items() if which is None or kind(k) == which]
        return len(tensors), sum(t.numel() for t in tensors)

    assert count(None) == (1484, 1_413_284_420)
    assert count("temporal_conv") == (352, 266_891_520)
    assert count("temporal_transformer") == (442, 278_431_616)
    assert count("fps") == (4, 2_050_560)
    assert count("spatial")[0] == 686
    # init_attn: 8 heads x 64 = 512 wide over 320 channels, with Conv1d projections.
    assert full_unet_state["init_attn.0.proj_in.weight"].shape == (512, 320, 1)
    assert full_unet_state["init_attn.0.proj_out.weight"].shape == (320, 512, 1)
    assert full_unet_state["init_attn.0.transformer_blocks.0.ff.net.0.proj.weight"].shape == (4096, 512)
    assert full_unet_state["input_blocks.1.0.temopral_conv.conv2.3.weight"].shape == (320, 320, 3, 1, 1)
    assert full_unet_state["input_blocks.1.2.transformer_blocks.0.attn2.to_k.weight"].shape == (320, 320)
    assert full_unet_state["output_blocks.8.3.conv.weight"].shape == (640, 640, 3, 3)


def test_spatial_keys_are_the_sd2_ldm_unet(full_unet_state):
    """The oracle is diffusers' single-file converter, which is how SD 2.x ldm checkpoints load into
    diffusers: after the three index shifts caused by the inserted temporal transformer, the 686
    spatial tensors must map one-to-one, shape for shape, onto an SD 2.x UNet2DConditionModel (whose
    config is written out here, as in stable-diffusion-2-1-base). A wrong name is dropped by the
    converter (count mismatch), a wrong slot lands on a wrongly shaped tensor."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    spatial = {"model.diffusion_model." + sd2_name(k): v for k, v in full_unet_state.items() if kind(k) == "spatial"}
    config = sd2_unet_config([320, 640, 1280, 1280], 64, 1024)
    converted = convert_ldm_unet_checkpoint(spatial, config)
    with torch.device("meta"):
        sd2 = UNet2DConditionModel(**config).state_dict()
    assert len(converted) == len(spatial) == len(sd2) == 686
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in sd2.items()}


def test_full_size_text_tower_on_meta():
    with torch.device("meta"):
        state = vc.OpenCLIPTextTower().state_dict()
    assert len(state) == 294
    assert sum(v.numel() for v in state.values()) == 354_032_641
    assert state["transformer.resblocks.23.attn.in_proj_weight"].shape == (3072, 1024)
    assert state["transformer.resblocks.23.mlp.c_proj.weight"].shape == (1024, 4096)
    assert state["text_projection"].shape == (1024, 1024) and state["logit_scale"].shape == ()


# ------------------------------------------------------------------------------ tiny checkpoint


def test_tiny_checkpoint_has_the_real_key_set(tmp_path, tiny_state, full_unet_state):
    path = tiny.write_tiny_videocrafter(str(tmp_path), seed=0)
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    assert len(state) == 2039
    counts = [sum(k.startswith(p) for k in state) for p in (vc.UNET_PREFIX, vc.VAE_PREFIX, vc.TEXT_PREFIX)]
    assert counts == [1484, 248, 294]
    assert sorted(k for k in state if "." not in k) == sorted(vc.SCHEDULE_BUFFERS)
    # Same names as the full-size model's parts, same values as built in memory.
    assert set(part(state, vc.UNET_PREFIX)) == set(full_unet_state)
    with torch.device("meta"):
        assert set(part(state, vc.TEXT_PREFIX)) == set(vc.OpenCLIPTextTower().state_dict())
    assert set(part(state, vc.VAE_PREFIX)) == set(tiny.ldm_vae_shapes(vc.VC2_VAE_PARAMS))
    assert all(torch.equal(state[k], tiny_state[k]) for k in state)
    assert state["scale_arr"].shape == (1400,) and state["alphas_cumprod"][0].item() == pytest.approx(0.99915)

    # The yaml and the open_clip config written beside it describe the tiny model.
    import json

    import yaml

    settings = vc.read_vc2_config(yaml.safe_load(open(tmp_path / tiny.YAML_NAME)))
    assert settings["unet"]["model_channels"] == 32 and settings["text_layer"] == "penultimate"
    assert (settings["scale_b"], settings["linear_end"], settings["scale_factor"]) == (0.7, 0.012, 0.18215)
    text_config = vc.text_config_from_open_clip(json.load(open(tmp_path / f"{settings['text_arch']}.json")))
    assert (text_config["width"], text_config["layers"]) == (64, 24)
    vae_config = vc.vc2_vae_config(settings["first_stage"], settings["scale_factor"])
    assert vae_config["block_out_channels"] == [32, 64, 128, 128]

    # The other two containers the official loader accepts (a few tensors suffice for the layout).
    some = {k: tiny_state[k] for k in ("scale_arr", vc.UNET_PREFIX + "out.2.weight", vc.TEXT_PREFIX + "logit_scale")}
    tiny.save_videocrafter_checkpoint(some, str(tmp_path / "module.ckpt"), "module")
    module = torch.load(tmp_path / "module.ckpt", weights_only=True)
    assert list(module) == ["module"]
    assert set(module["module"]) == {"_forward_module." + k for k in some}
    assert all(torch.equal(module["module"]["_forward_module." + k], v) for k, v in some.items())
    tiny.save_videocrafter_checkpoint(some, str(tmp_path / "bare.ckpt"), "bare")
    bare = torch.load(tmp_path / "bare.ckpt", weights_only=True)
    assert set(bare) == set(some) and all(torch.equal(bare[k], v) for k, v in some.items())


def test_vae_converts_from_ldm_names(tiny_state):
    vae = vc.vc2_vae(part(tiny_state, vc.VAE_PREFIX), tiny.TINY_VAE_PARAMS)
    with torch.no_grad():
        image = vae.decode(latents(1, 4, 8, 12) / vae.config.scaling_factor).sample
    assert image.shape == (1, 3, 64, 96) and torch.isfinite(image).all()
    with pytest.raises(ValueError, match="4 missing"):  # a missing tensor is not silently left random
        vc.vc2_vae({k: v for k, v in part(tiny_state, vc.VAE_PREFIX).items() if "mid.attn_1.q" not in k})


# ------------------------------------------------------------------------------ config checks


def test_config_checks():
    assert vc.check_unet_params(dict(vc.VC2_UNET_CONFIG, some_new_key=1))["num_head_channels"] == 64
    with pytest.raises(ValueError, match="VideoCrafter1"):
        vc.check_unet_params(dict(vc.VC2_UNET_CONFIG, use_relative_position=True))
    without = {k: v for k, v in vc.VC2_UNET_CONFIG.items() if k != "use_relative_position"}
    with pytest.raises(ValueError, match="VideoCrafter1"):  # the official default is true
        vc.check_unet_params(without)
    with pytest.raises(ValueError, match="fps_cond"):
        vc.check_unet_params(dict(vc.VC2_UNET_CONFIG, fps_cond=False))
    original = tiny.tiny_inference_yaml()
    assert vc.read_vc2_config(original)["text_arch"] == tiny.TINY_TEXT_ARCH
    image_to_video = {"model": dict(original["model"], target="lvdm.models.ddpm3d.LatentVisualDiffusion")}
    with pytest.raises(ValueError, match="LatentVisualDiffusion"):
        vc.read_vc2_config(image_to_video)
    no_rescale = {"model": dict(original["model"], params=dict(original["model"]["params"], use_scale=False))}
    with pytest.raises(ValueError, match="use_scale"):
        vc.read_vc2_config(no_rescale)
    with pytest.raises(ValueError, match="quick_gelu"):
        vc.text_config_from_open_clip(dict(tiny.TINY_OPEN_CLIP_CONFIG, quick_gelu=True))


# ------------------------------------------------------------------------------ schedule


def test_scale_arr_values():
    s = vc.scale_arr()
    assert s.shape == (1400,)
    assert s[0].item() == 1.0
    assert s[398].item() == pytest.approx(0.7 + 0.3 / 399, abs=1e-15)  # linear ramp over t = 0..399
    assert s[399].item() == pytest.approx(0.7, abs=1e-15)
    assert torch.all(s[400:] == 0.7)
    assert torch.equal(vc.vc2_schedule_buffers()["scale_arr"], s.float())


def test_add_noise_round_trip_and_signal_coefficient():
    x0, eps = latents(1, 4, 3, 4, 4, seed=1).double(), latents(1, 4, 3, 4, 4, seed=2).double()
    for t in (0, 1, 250, 399, 400, 881, 999):
        x_t = vc.vc2_add_noise(x0, eps, t)
        assert torch.allclose(vc.vc2_predict_x0(x_t, eps, t), x0, atol=1e-11)
    # At t = 881 sqrt(a) = 0.131 and s = 0.7: the signal keeps 0.092 of x0.
    signal = vc.vc2_add_noise(torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64), 881)
    assert signal.item() == pytest.approx(0.131 * 0.7, abs=1e-3)
    assert vc.vc2_alphas_cumprod()[0].item() == pytest.approx(1 - 0.00085)


def test_ddim_step():
    a, s = vc.vc2_alphas_cumprod(), vc.scale_arr()
    x0, eps = latents(1, 4, 3, 4, 4, seed=1).double(), latents(1, 4, 3, 4, 4, seed=2).double()
    # With the true noise, eta = 0 DDIM lands exactly on the forward process at t_prev (scale included).
    for t, t_prev in ((981, 961), (401, 381), (381, 361), (21, 1)):
        x_prev, pred_x0 = vc.vc2_ddim_step(vc.vc2_add_noise(x0, eps, t), eps, t, t_prev)
        assert torch.allclose(pred_x0, x0, atol=1e-11)
        assert torch.allclose(x_prev, vc.vc2_add_noise(x0, eps, t_prev), atol=1e-11)
    # The last step goes to a_0 (0.99915, not 1) with s = 1, and pred_x0 is divided by s_t.
    x_t = latents(1, 4, 3, 4, 4, seed=3).double()
    x_prev, pred_x0 = vc.vc2_ddim_step(x_t, eps, 1, None)
    expected_x0 = (x_t - math.sqrt(1 - a[1]) * eps) / math.sqrt(a[1]) / s[1]
    assert torch.allclose(pred_x0, expected_x0, atol=1e-12)
    assert torch.allclose(x_prev, math.sqrt(a[0]) * 1.0 * expected_x0 + math.sqrt(1 - a[0]) * eps, atol=1e-12)
    assert torch.equal(vc.vc2_ddim_step(x_t, eps, 1, 0)[0], x_prev)


# ------------------------------------------------------------------------------ the UNet


def test_unet_shapes_batch_and_argument_forms(unet):
    x = latents(2, 4, FRAMES, SIZE, SIZE)
    context = latents(2, 77, 64, seed=9)
    both = run(unet, x, torch.tensor([501, 501]), context, torch.tensor([28, 28]))
    assert both.shape == x.shape
    assert torch.equal(both, run(unet, x, 501, context, 28))
    # Each video is its own: batching must not mix the frames' statistics of two videos.
    alone = run(unet, x[1:], 501, context[1:], 28)
    assert rel(both[1:], alone) < 1e-5
    # Non-square latents, and a size the official code cannot run (not divisible by 8).
    for h, w in ((8, 16), (8, 12)):
        assert run(unet, latents(1, 4, 2, h, w)).shape == (1, 4, 2, h, w)


def test_fps_changes_the_output(unet):
    x = latents(1, 4, FRAMES, SIZE, SIZE)
    assert rel(run(unet, x, fps=8), run(unet, x, fps=28)) > 1e-3


def test_temporal_attention_has_no_position_term(unet):
    """With the temporal convolutions made identities (their last conv zeroed), the network treats
    frames as a set: permuting the input frames permutes the output. With them it does not."""
    x = latents(1, 4, FRAMES, SIZE, SIZE)
    order = torch.tensor([2, 0, 3, 1])
    with_convs = run(unet, x[:, :, order])
    assert rel(with_convs, run(unet, x)[:, :, order]) > 1e-3
    saved = {k: v.clone() for k, v in unet.state_dict().items() if ".temopral_conv.conv4.3." in k}
    try:
        with torch.no_grad():
            for name, param in unet.named_parameters():
                if name in saved:
                    param.zero_()
        assert rel(run(unet, x[:, :, order]), run(unet, x)[:, :, order]) < 1e-5
    finally:
        unet.load_state_dict(saved, strict=False)


def test_every_temporal_part_is_used(unet):
    """Zeroing the output layer of each kind of temporal module changes the prediction (a module that
    is built but skipped in forward would not)."""
    x = latents(1, 4, FRAMES, SIZE, SIZE)
    reference = run(unet, x)
    for stem in (
        "init_attn.0.proj_out",
        "input_blocks.1.2.proj_out",
        "middle_block.2.proj_out",
        "output_blocks.11.2.proj_out",
        "input_blocks.1.0.temopral_conv.conv4.3",
        "output_blocks.0.0.temopral_conv.conv4.3",
        "fps_embedding.2",
    ):
        layer = unet.get_submodule(stem)
        saved = {k: v.clone() for k, v in layer.state_dict().items()}
        try:
            with torch.no_grad():
                for param in layer.parameters():
                    param.zero_()
            assert rel(run(unet, x), reference) > 1e-4, stem
        finally:
            layer.load_state_dict(saved)


def test_spatial_part_equals_diffusers_sd2_unet(tiny_state):
    """Independent oracle for the spatial maths (resnets, attention, GEGLU, time embedding, up/down
    sampling): with one frame and every temporal contribution and the fps embedding zeroed, the
    UNet is an SD 2.x UNet, i.e. diffusers' UNet2DConditionModel loaded with the spatial tensors."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    weights = part(tiny_state, vc.UNET_PREFIX)
    for key in weights:
        if key.startswith(("init_attn.0.proj_out.", "fps_embedding.2.")) or ".temopral_conv.conv4.3." in key:
            weights[key] = torch.zeros_like(weights[key])
        elif TEMPORAL_SLOT.match(key) and ".proj_out." in key:
            weights[key] = torch.zeros_like(weights[key])
    model = vc.VideoCrafterUNet(tiny.TINY_UNET_PARAMS).eval()
    model.load_state_dict(weights, strict=True)

    spatial = {"model.diffusion_model." + sd2_name(k): v for k, v in weights.items() if kind(k) == "spatial"}
    config = sd2_unet_config([32, 64, 128, 128], 16, 64)
    sd2 = UNet2DConditionModel(**config).eval()
    sd2.load_state_dict(convert_ldm_unet_checkpoint(spatial, config), strict=True)
    x, context = latents(2, 4, 1, SIZE, 16), latents(2, 77, 64, seed=3)
    with torch.no_grad():
        ours = model(x, torch.tensor([981, 17]), context, 28)[:, :, 0]
        oracle = sd2(x[:, :, 0], torch.tensor([981, 17]), context).sample
    assert rel(ours, oracle) < 1e-5


def test_attention_split_into_sequence_chunks_is_exact(monkeypatch):
    """Very many sequences (one per pixel in the temporal attention) are attended in chunks."""
    torch.manual_seed(0)
    attention = vc.Attention(32, heads=2, head_dim=16).eval()
    x = latents(40, 5, 32)
    with torch.no_grad():
        whole = attention(x)
        monkeypatch.setattr(vc, "MAX_ATTENTION_BATCH", 16)  # 8 sequences x 2 heads per call
        calls = []
        sdpa = torch.nn.functional.scaled_dot_product_attention
        monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", lambda *a: calls.append(1) or sdpa(*a))
        assert torch.allclose(attention(x), whole, atol=1e-6)
    assert len(calls) == 5


def test_temporal_conv_pads_with_zeros():
    """One frame: the (3, 1, 1) kernels' outer taps only see the zero padding, so only the centre tap
    counts (replicate or circular padding would add the outer taps on the same frame)."""
    torch.manual_seed(0)
    block = vc.TemporalConvBlock(32).eval()
    x = latents(2, 32, 1, 3, 5)
    with torch.no_grad():
        h = x
        for stage in (block.conv1, block.conv2, block.conv3, block.conv4):
            conv = stage[-1]
            h = torch.nn.functional.silu(stage[0](h))
            h = torch.nn.functional.conv3d(h, conv.weight[:, :, 1:2], conv.bias)
        assert torch.allclose(block(x), h + x, atol=1e-6)


def test_chunking_frames_changes_the_output(unet):
    x = latents(1, 4, 2 * FRAMES, SIZE, SIZE)
    whole = run(unet, x)
    chunked = torch.cat([run(unet, x[:, :, :FRAMES]), run(unet, x[:, :, FRAMES:])], dim=2)
    assert rel(chunked, whole) > 1e-3


def test_float16_forward_stays_close(unet):
    import copy

    x = latents(1, 4, 2, SIZE, SIZE)
    half = copy.deepcopy(unet).half()
    out = run(half, x.half(), context=latents(1, 77, 64, seed=5).half())
    assert out.dtype == torch.float16
    assert rel(out.float(), run(unet, x, context=latents(1, 77, 64, seed=5))) < 2e-2


# ------------------------------------------------------------------------------ text


def test_tokenize_matches_open_clip():
    ids = vc.vc2_tokenize(["", "A cat playing the PIANO, 4k!!!", "Tom &amp; Jerry &lt;3 &quot;cartoon&quot; &#39;90s"])
    assert ids.shape == (3, 77) and ids.dtype == torch.long
    assert ids[0].tolist() == [49406, 49407] + [0] * 75
    assert ids[1, :11].tolist() == [49406, 320, 2368, 1629, 518, 7894, 267, 275, 330, 995, 49407]
    assert ids[2, :14].tolist() == [49406, 2435, 261, 9164, 283, 274, 257, 7651, 257, 262, 280, 271, 338, 49407]
    assert not ids[1, 11:].any() and not ids[2, 14:].any()
    # Whitespace runs collapse; the over-long prompt is cut to 77 with the end token forced last.
    assert vc.vc2_tokenize("waves   crashing\tagainst a\nlighthouse...")[0, :8].tolist() == [
        49406, 7882, 24991, 1601, 320, 13717, 678, 49407,
    ]  # fmt: skip
    phrase = [320, 1215, 3424, 962, 518, 5873, 593, 4337]  # "a beautiful sunset over the mountains with birds"
    long = vc.vc2_tokenize(" ".join(["a beautiful sunset over the mountains with birds"] * 12))[0]
    assert long.tolist() == ([49406] + phrase * 12)[:76] + [49407]


def test_text_tower_equals_transformers_sd2_text_encoder(tiny_state, text_tower):
    """Independent oracle: diffusers converts OpenCLIP towers for SD 2.x into a transformers
    CLIPTextModel without the last block, whose last_hidden_state (final LayerNorm included) is SD 2.x's
    penultimate-layer conditioning."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=23,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="gelu",
        projection_dim=64,
    )
    model = CLIPTextModel(config).eval()
    weights = convert_open_clip_checkpoint(model, tiny_state)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert not unexpected and all("position_ids" in k for k in missing)
    ids = vc.vc2_tokenize(["", "a cat playing the piano, 4k", "waves crashing against a lighthouse at night"])
    with torch.no_grad():
        assert rel(text_tower.encode(ids), model(ids).last_hidden_state) < 1e-5


def test_text_tower_reads_the_penultimate_layer_causally(text_tower):
    ids = vc.vc2_tokenize(["a red fox in the snow", "a red fox in the rain"])
    with torch.no_grad():
        out = text_tower.encode(ids)
        last = text_tower.encode(ids, layer="last")
    assert out.shape == (2, 77, 64)
    assert rel(out, last) > 1e-2
    differ = (ids[0] != ids[1]).nonzero()[0].item()
    assert torch.allclose(out[0, :differ], out[1, :differ], atol=1e-6)  # causal: earlier tokens unchanged
    assert not torch.allclose(out[0, differ], out[1, differ], atol=1e-3)
