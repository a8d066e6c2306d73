"""LaVie base network (lib_elevator.t2v.lavie_net): key layout of the published file, the temporal
attention's position terms, an SD 1.x oracle through diffusers, frame-spanning GroupNorms, dtypes.

The side-by-side check against the official implementation is described in docs/t2v-equivalence.md
(it needs the upstream code, so it is not part of this suite)."""

from __future__ import annotations

import copy
import json
import math
import os

import pytest
import torch

from lib_elevator.t2v import lavie_net
from lib_elevator.t2v.lavie_net import (
    LAVIE_BASE_UNET_CONFIG,
    LaVieConfig,
    LaVieUNet,
    apply_rope,
    check_rope_freqs,
    is_temporal_key,
    lavie_config,
    relative_position_buckets,
    rope_cos_sin,
    rope_frequencies,
    split_rope_freqs,
)
from lib_elevator.tiny.lavie import TINY_LAVIE_UNET_CONFIG, tiny_lavie_unet, write_tiny_lavie

TEXT_DIM = TINY_LAVIE_UNET_CONFIG["cross_attention_dim"]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference relative to the reference's largest magnitude."""
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def inputs(frames: int, h: int = 8, w: int = 8, batch: int = 2, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, 4, frames, h, w, generator=generator)
    text = torch.randn(batch, 77, TEXT_DIM, generator=generator)
    return sample, text


@pytest.fixture(scope="module")
def unet() -> LaVieUNet:
    return tiny_lavie_unet(seed=0)


def without_temporal_output(model: LaVieUNet) -> LaVieUNet:
    """A copy whose temporal attentions add nothing (to_out weight and bias zero)."""
    silent = copy.deepcopy(model)
    with torch.no_grad():
        for name, param in silent.named_parameters():
            if ".attn_temp.to_out.0." in name:
                param.zero_()
    return silent


# ----------------------------------------------------------------------------- full-size layout


def test_full_size_layout_matches_the_published_file_and_diffusers_sd1():
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        ours = LaVieUNet()
        sd1 = UNet2DConditionModel(**{k: v for k, v in LAVIE_BASE_UNET_CONFIG.items() if not k.startswith("_")})
    state = ours.state_dict()
    file_state = ours.file_state_dict()
    freq_names = [k for k in file_state if k.endswith("attn_temp.rotary_emb.freqs")]
    assert len(state) == 814 and len(freq_names) == 16 and len(file_state) == 830
    assert sum(v.numel() for v in file_state.values()) == 909_124_356

    temporal = {k: v for k, v in file_state.items() if is_temporal_key(k)}
    assert len(temporal) == 144
    assert sum(v.numel() for v in temporal.values()) == 49_603_392
    kinds = {}
    for name in temporal:
        kind = name.split("transformer_blocks.0.", 1)[1]
        kinds[kind] = kinds.get(kind, 0) + 1
    assert kinds == {
        k: 16
        for k in (
            "attn_temp.to_q.weight",
            "attn_temp.to_k.weight",
            "attn_temp.to_v.weight",
            "attn_temp.to_out.0.weight",
            "attn_temp.to_out.0.bias",
            "attn_temp.time_rel_pos_bias.relative_attention_bias.weight",
            "attn_temp.rotary_emb.freqs",
            "norm_temp.weight",
            "norm_temp.bias",
        )
    }
    assert file_state["mid_block.attentions.0.transformer_blocks.0.attn_temp.to_q.weight"].shape == (1280, 1280)
    assert file_state[
        "down_blocks.0.attentions.0.transformer_blocks.0.attn_temp.time_rel_pos_bias.relative_attention_bias.weight"
    ].shape == (32, 8)

    spatial = {k: tuple(v.shape) for k, v in file_state.items() if not is_temporal_key(k)}
    assert len(spatial) == 686
    assert spatial == {k: tuple(v.shape) for k, v in sd1.state_dict().items()}


# ----------------------------------------------------------------------------- the tiny file


def test_tiny_file_has_the_real_key_set_and_loads_strictly(tmp_path, unet):
    path = write_tiny_lavie(str(tmp_path), seed=0)
    assert os.path.basename(path) == "lavie_base.pt"
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert list(checkpoint) == ["ema"]
    state = checkpoint["ema"]
    assert len(state) == 830 and sum(is_temporal_key(k) for k in state) == 144

    with open(tmp_path / "config.json", encoding="utf-8") as f:
        config = lavie_config(json.load(f))
    assert config.block_out_channels == (64, 96, 128, 128) and config.head_dims == (32, 48, 64, 64)
    model = LaVieUNet(config)
    rest, freqs = split_rope_freqs(state)
    assert len(rest) == 814 and len(freqs) == 16
    check_rope_freqs(freqs, model)
    for value in freqs.values():
        assert torch.equal(value, rope_frequencies())
    model.load_state_dict(rest, strict=True)
    # Built twice with seed 0 (here through the file): the same tensors.
    reference = unet.state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(value, reference[name]), name

    # The full-size layout differs from the tiny one only in widths: same names.
    with torch.device("meta"):
        full = LaVieUNet().file_state_dict()
    assert list(full) == list(state)


def test_tiny_weights_depend_on_the_seed_and_are_nowhere_constant(unet):
    other = tiny_lavie_unet(seed=1).state_dict()
    for name, value in unet.state_dict().items():
        assert not torch.equal(value, other[name]), name
        assert value.std() > 0, f"{name} is constant"


def test_rope_freq_check_refuses_other_values_and_missing_entries(unet):
    freqs = {k: v for k, v in split_rope_freqs(unet.file_state_dict())[1].items()}
    check_rope_freqs({k: v.half() for k, v in freqs.items()}, unet)  # a float16 copy of the file is fine
    name = next(iter(freqs))
    with pytest.raises(ValueError, match="differ"):
        check_rope_freqs({**freqs, name: 1.0 / (10000 ** (torch.arange(0, 32, 2).float() / 64))}, unet)
    with pytest.raises(ValueError, match="missing"):
        check_rope_freqs({k: v for k, v in freqs.items() if k != name}, unet)
    with pytest.raises(ValueError, match="shape"):
        check_rope_freqs({name: torch.ones(8)})


# ----------------------------------------------------------------------------- config


def test_config_reads_sd14_files_and_refuses_other_networks():
    assert lavie_config(LAVIE_BASE_UNET_CONFIG) == LaVieConfig()
    assert lavie_config({}) == LaVieConfig()
    # Keys that do not shape the network are ignored; LaVie's own 3-D block names are accepted.
    extra = {
        **LAVIE_BASE_UNET_CONFIG,
        "_diffusers_version": "0.2.2",
        "sample_size": 32,
        "use_first_frame": True,
        "down_block_types": ["CrossAttnDownBlock3D"] * 3 + ["DownBlock3D"],
        "up_block_types": ["UpBlock3D"] + ["CrossAttnUpBlock3D"] * 3,
        "attention_head_dim": [8, 8, 8, 8],
        "num_attention_heads": None,
    }
    assert lavie_config(extra) == LaVieConfig()

    refused = {
        "levels": {"down_block_types": ["CrossAttnDownBlock2D"] * 2 + ["DownBlock2D"]},
        "up layout": {"up_block_types": ["CrossAttnUpBlock2D"] * 3 + ["UpBlock2D"]},
        "SD 2.x": {"use_linear_projection": True},
        "per-level heads": {"attention_head_dim": [5, 10, 20, 20]},
        "contradicting heads": {"num_attention_heads": 16},
        "class embedding": {"class_embed_type": "timestep"},
        "small heads": {"block_out_channels": [64, 64, 128, 128], "attention_head_dim": 4},
        "groups": {"block_out_channels": [48, 96, 128, 128], "attention_head_dim": 1},
        "mid block": {"mid_block_type": "UNetMidBlock2DSimpleCrossAttn"},
        "channels": {"block_out_channels": [320, 640, 1280]},
    }
    for label, change in refused.items():
        with pytest.raises(ValueError, match="LaVie config"):
            lavie_config({**LAVIE_BASE_UNET_CONFIG, **change})
            pytest.fail(label)


# ----------------------------------------------------------------------------- position terms


def test_bucket_table_for_16_frames():
    buckets = relative_position_buckets(16)
    # offset = key - query
    before = [buckets[15, 15 - k].item() for k in range(16)]  # offsets 0 .. -15
    after = [buckets[0, k].item() for k in range(1, 16)]  # offsets +1 .. +15
    assert before == [0, 1, 2, 3, 4, 5, 6, 7, 8, 8, 9, 9, 10, 10, 11, 11]
    assert after == [17, 18, 19, 20, 21, 22, 23, 24, 24, 25, 25, 26, 26, 27, 27]
    # Toeplitz: the bucket depends on the offset only.
    for i in range(16):
        for j in range(16):
            assert buckets[i, j] == buckets[i - min(i, j), j - min(i, j)]
    # Beyond 32 frames of distance the buckets saturate.
    far = relative_position_buckets(40)
    assert far[39, 0] == 15 and far[0, 39] == 31 and far[32, 0] == 15 and far[16, 0] == 12


def test_rope_rotates_interleaved_pairs_of_the_first_32_channels_only():
    frames, head_dim = 6, 48
    x = torch.randn(3, 2, frames, head_dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    cos, sin = rope_cos_sin(frames, dtype=torch.float64)
    out = apply_rope(x, cos, sin)
    assert torch.equal(out[..., 32:], x[..., 32:])
    assert torch.allclose(out[:, :, 0], x[:, :, 0])  # position 0: angle 0
    assert not torch.allclose(out[:, :, 1:, :32], x[:, :, 1:, :32])
    # Channel pairs (2i, 2i+1) as complex numbers, multiplied by exp(j * position * theta_i), with
    # theta_i = 1/10000^(2i/32) as the file stores it (float32).
    theta = rope_frequencies().double()
    assert torch.allclose(theta, 1.0 / 10000 ** (torch.arange(16, dtype=torch.float64) * 2 / 32), rtol=1e-7)
    phase = torch.polar(torch.ones(frames, 16, dtype=torch.float64), torch.arange(frames)[:, None] * theta)
    expected = torch.view_as_real(torch.view_as_complex(x[..., :32].reshape(3, 2, frames, 16, 2).contiguous()) * phase)
    assert torch.allclose(out[..., :32], expected.reshape(3, 2, frames, 32), rtol=0, atol=1e-12)


def test_rope_scores_depend_on_the_position_difference_only():
    frames, shift = 5, 7
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(4, frames, 64, dtype=torch.float64, generator=generator)
    k = torch.randn(4, frames, 64, dtype=torch.float64, generator=generator)
    cos, sin = rope_cos_sin(frames + shift, dtype=torch.float64)
    plain = apply_rope(q, cos[:frames], sin[:frames]) @ apply_rope(k, cos[:frames], sin[:frames]).transpose(-1, -2)
    shifted = apply_rope(q, cos[shift:], sin[shift:]) @ apply_rope(k, cos[shift:], sin[shift:]).transpose(-1, -2)
    assert torch.allclose(plain, shifted, rtol=0, atol=1e-10)
    assert not torch.allclose(plain, q @ k.transpose(-1, -2), atol=1e-3)


def test_temporal_attention_matches_a_direct_statement():
    """Per head: softmax_j(RoPE(q_i)/sqrt(d) . RoPE(k_j) + table[bucket(i, j), head]) v_j, then to_out."""
    torch.manual_seed(0)
    frames, dim, heads = 7, 96, 2
    attention = lavie_net.TemporalAttention(dim, heads).double()
    x = torch.randn(3, frames, dim, dtype=torch.float64)
    with torch.no_grad():
        got = attention(x)
        d = dim // heads
        theta = rope_frequencies().double()
        table = attention.time_rel_pos_bias.relative_attention_bias.weight
        expected = torch.empty_like(x)
        for n in range(3):
            q, k, v = attention.to_q(x[n]), attention.to_k(x[n]), attention.to_v(x[n])
            out_heads = []
            for h in range(heads):
                qh, kh, vh = (t[:, h * d : (h + 1) * d] for t in (q, k, v))
                rotated = []
                for t in (qh, kh):
                    t = t.clone()
                    for p in range(frames):
                        for i in range(16):
                            a, b = t[p, 2 * i].item(), t[p, 2 * i + 1].item()
                            c, s = math.cos(p * theta[i].item()), math.sin(p * theta[i].item())
                            t[p, 2 * i], t[p, 2 * i + 1] = a * c - b * s, b * c + a * s
                    rotated.append(t)
                scores = rotated[0] @ rotated[1].T / math.sqrt(d)
                for i in range(frames):
                    for j in range(frames):
                        offset = j - i  # key after the query: buckets 16..31
                        distance = abs(offset)
                        bucket = (
                            distance if distance < 8 else min(15, 8 + int(math.log(distance / 8) / math.log(4) * 8))
                        )
                        scores[i, j] += table[bucket + (16 if offset > 0 else 0), h]
                out_heads.append(scores.softmax(-1) @ vh)
            expected[n] = attention.to_out[0](torch.cat(out_heads, dim=-1))
    assert torch.allclose(got, expected, rtol=0, atol=1e-10)


# ----------------------------------------------------------------------------- whole-network behaviour


def test_one_frame_without_temporal_output_equals_diffusers_sd1_unet(unet):
    """F = 1 and zero temporal outputs leave SD 1.x: diffusers' UNet2DConditionModel with the 686
    spatial tensors. Same maths in another operation order: float32 rounding, measured ~1e-6."""
    from diffusers import UNet2DConditionModel

    silent = without_temporal_output(unet)
    config = {k: v for k, v in TINY_LAVIE_UNET_CONFIG.items() if not k.startswith("_")}
    sd1 = UNet2DConditionModel(**config).eval()
    sd1.load_state_dict({k: v for k, v in unet.state_dict().items() if not is_temporal_key(k)}, strict=True)
    for h, w in ((8, 8), (8, 12)):  # 8x12: sides not multiples of 8, upsample sizes forwarded
        sample, text = inputs(1, h, w, seed=h + w)
        timesteps = torch.tensor([981, 281])
        with torch.no_grad():
            expected = sd1(sample[:, :, 0], timesteps, text).sample
            got = silent(sample, timesteps, text)[:, :, 0]
            with_temporal = unet(sample, timesteps, text)[:, :, 0]
        assert rel(got, expected) < 1e-5
        assert rel(with_temporal, expected) > 1e-2  # the oracle is not blind to the temporal layers


def test_groupnorm_spans_the_frames_so_frame_chunks_change_the_output(unet):
    """With the temporal attentions silenced, only the frame-spanning GroupNorms couple the frames:
    permuting the frames permutes the output, but running them in two chunks changes it."""
    silent = without_temporal_output(unet)
    sample, text = inputs(8)
    with torch.no_grad():
        whole = silent(sample, 500, text)
        chunks = torch.cat([silent(sample[:, :, :4], 500, text), silent(sample[:, :, 4:], 500, text)], dim=2)
        order = torch.randperm(8, generator=torch.Generator().manual_seed(0))
        permuted = silent(sample[:, :, order], 500, text)
    assert rel(permuted, whole[:, :, order]) < 1e-5
    assert rel(chunks, whole) > 1e-3
    # The same holds for the whole model (where the temporal attention couples frames as well).
    with torch.no_grad():
        full_chunks = torch.cat([unet(sample[:, :, :4], 500, text), unet(sample[:, :, 4:], 500, text)], dim=2)
    assert rel(full_chunks, unet(sample, 500, text)) > 1e-3


def test_which_groupnorms_span_the_frames(unet):
    """As upstream: the resnets' norm1/norm2 and conv_norm_out normalise the whole 5-D video, the
    transformers' input norm each frame."""
    seen = {}

    def record(name):
        def hook(module, args):
            seen[name] = args[0].ndim

        return hook

    hooks = [
        module.register_forward_pre_hook(record(name))
        for name, module in unet.named_modules()
        if isinstance(module, torch.nn.GroupNorm)
    ]
    try:
        sample, text = inputs(3, batch=1)
        with torch.no_grad():
            unet(sample, 500, text)
    finally:
        for hook in hooks:
            hook.remove()
    norms = [name for name, module in unet.named_modules() if isinstance(module, torch.nn.GroupNorm)]
    assert sorted(seen) == sorted(norms) and len(norms) == 22 * 2 + 16 + 1
    for name, ndim in seen.items():
        per_video = ".resnets." in name or name == "conv_norm_out"
        assert ndim == (5 if per_video else 4), name


def test_frame_order_matters_with_the_temporal_layers(unet):
    sample, text = inputs(6, seed=3)
    order = torch.tensor([5, 4, 3, 2, 1, 0])
    with torch.no_grad():
        forward = unet(sample, 500, text)
        backward = unet(sample[:, :, order], 500, text)[:, :, order]
    assert rel(backward, forward) > 1e-3  # RoPE and the bias are direction-aware


def test_videos_in_a_batch_are_independent_and_timestep_forms_agree(unet):
    sample, text = inputs(5, 8, 12)
    with torch.no_grad():
        both = unet(sample, torch.tensor([700, 700]), text)
        first = unet(sample[:1], 700, text[:1])
        second = unet(sample[1:], torch.tensor(700), text[1:])
        as_list = unet(sample, torch.tensor([700]), text)
        mixed = unet(sample, torch.tensor([700, 100]), text)
    assert both.shape == sample.shape
    assert rel(first, both[:1]) < 1e-5 and rel(second, both[1:]) < 1e-5 and rel(as_list, both) < 1e-6
    assert rel(mixed[:1], both[:1]) < 1e-5 and rel(mixed[1:], both[1:]) > 1e-3
    with pytest.raises(ValueError, match="one text embedding per video"):
        unet(sample, 700, text[:1])


@pytest.mark.parametrize("frames, h, w", [(3, 8, 12), (2, 16, 8), (4, 12, 20)])
def test_non_square_latents(unet, frames, h, w):
    sample, text = inputs(frames, h, w, batch=1)
    with torch.no_grad():
        out = unet(sample, 321, text)
    assert out.shape == sample.shape and torch.isfinite(out).all()


def test_half_precision_forward_stays_close_to_float32(unet):
    """GroupNorm statistics and the temporal softmax are taken in float32; the rest runs in half
    precision. Measured on this model: float16 ~2e-3, bfloat16 ~1.5e-2 of the float32 output."""
    sample, text = inputs(3, 8, 12)
    with torch.no_grad():
        reference = unet(sample, 500, text)
    half = copy.deepcopy(unet)
    for dtype, tolerance in ((torch.float16, 1e-2), (torch.bfloat16, 5e-2)):
        half.to(dtype)
        with torch.no_grad():
            out = half(sample.to(dtype), 500, text.to(dtype))
        assert out.dtype == dtype
        assert rel(out.float(), reference) < tolerance, dtype


def test_groupnorm_takes_half_precision_statistics_in_float32(monkeypatch):
    norm = lavie_net.GroupNorm(4, 8, eps=1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    x = (30 + 3 * torch.randn(1, 8, 16, 32, 32, generator=torch.Generator().manual_seed(0))).half()
    reference = norm(x.float())
    half = lavie_net.GroupNorm(4, 8, eps=1e-5).half()
    half.load_state_dict(norm.state_dict())
    seen = []
    group_norm = torch.nn.functional.group_norm

    def spy(input, *args, **kwargs):
        seen.append(input.dtype)
        return group_norm(input, *args, **kwargs)

    # (CPU kernels accumulate half inputs in float32 anyway; other devices need not.)
    monkeypatch.setattr(torch.nn.functional, "group_norm", spy)
    out = half(x)
    assert seen == [torch.float32]
    assert out.dtype == torch.float16
    assert rel(out.float(), reference) < 2e-3  # float16 rounding of the output only
