"""The LaVie base video UNet (Vchitect/LaVie, arXiv 2309.15103) as plain torch modules.

LaVie base is Stable Diffusion 1.4's UNet run on videos, with one temporal self-attention added
inside each of its 16 transformer blocks:

- latents are (B, 4, F, h, w); every convolution is a 2-D convolution applied frame by frame (there
  is no temporal convolution);
- the resnets' GroupNorms and the output GroupNorm see the whole 5-D tensor, so their statistics
  span all frames of a video (chunking frames through the network changes its output);
- each transformer block runs: spatial self-attention (per frame), cross-attention to the text
  (one (77, 768) embedding per video, shared by its frames), temporal self-attention (per spatial
  position, over the frames), GEGLU feed-forward;
- the temporal attention rotates q and k with RoPE (the first 32 channels of every head,
  interleaved pairs, positions 0..F-1) and adds a learned T5-style relative-position bias (32
  buckets, max distance 32), after q has been scaled by 1/sqrt(head_dim).

State-dict names are those of `lavie_base.pt` (diffusers' UNet2DConditionModel names plus the
`_temp` layers), so the file's tensors load 1:1 - with one exception, the RoPE frequencies:

    The file has 830 keys. 16 of them, `...transformer_blocks.0.attn_temp.rotary_emb.freqs`, are
    the same constant 1/10000^(2i/32), i = 0..15 (upstream shares one rotary module whose frozen
    frequencies were saved under every temporal attention). This module does not store them at
    all: the temporal attention computes the constant itself, in float32, on each call (a (F, 16)
    table, negligible). So `LaVieUNet.state_dict()` has 814 keys, casting the model to float16
    cannot round the frequencies, and building it on the meta device leaves nothing to restore.
    A loader calls `split_rope_freqs` on the file's state dict, checks the 16 values with
    `check_rope_freqs` (a file whose frequencies differ is not this model) and loads the rest
    strictly. `LaVieUNet.file_state_dict()` gives the 830-key layout of the file.

Everything is inference-only (no dropout, no gradient checkpointing). Spatial attention uses
`torch.nn.functional.scaled_dot_product_attention` (memory-efficient kernels where the device has
them); the temporal attention is explicit maths, its score tensor is only (B*h*w, heads, F, F). In
float16/bfloat16 the GroupNorm statistics, the RoPE angles and the temporal softmax are taken in
float32. Against the official implementation on the same weights the outputs agree to 4e-15 in
float64 and 1.5e-6 in float32 (docs/t2v-equivalence.md describes the side-by-side comparison).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# Temporal-attention constants of the published model (not derived from the channel widths).
ROPE_DIM = 32  # channels rotated in every head
ROPE_THETA = 10000.0
REL_POS_BUCKETS = 32
REL_POS_MAX_DISTANCE = 32
ROPE_FREQS_SUFFIX = "attn_temp.rotary_emb.freqs"

# SD 1.4's unet/config.json, which the official code reads (it then swaps in its 3-D block types).
LAVIE_BASE_UNET_CONFIG: dict = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}

# The only block layout LaVie has: three attention levels and a plain one (SD 1.x). The official
# code overrides whatever the config says with its 3-D names; both spellings describe the same thing.
_DOWN_LAYOUTS = (
    ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    ["CrossAttnDownBlock3D"] * 3 + ["DownBlock3D"],
)
_UP_LAYOUTS = (
    ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    ["UpBlock3D"] + ["CrossAttnUpBlock3D"] * 3,
)
_MID_TYPES = (None, "UNetMidBlock2DCrossAttn", "UNetMidBlock3DCrossAttn")

# Config keys that would change the network if they had another value. A config that sets one of
# them differently describes a model this module cannot be, and is refused.
_FIXED_KEYS: dict = {
    "act_fn": "silu",
    "center_input_sample": False,
    "use_linear_projection": False,
    "only_cross_attention": False,
    "dual_cross_attention": False,
    "upcast_attention": False,
    "resnet_time_scale_shift": "default",
    "mid_block_scale_factor": 1.0,
    "class_embed_type": None,
    "num_class_embeds": None,
    "addition_embed_type": None,
    "addition_time_embed_dim": None,
    "projection_class_embeddings_input_dim": None,
    "class_embeddings_concat": False,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "time_cond_proj_dim": None,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "time_embedding_act_fn": None,
    "timestep_post_act": None,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "transformer_layers_per_block": 1,
    "reverse_transformer_layers_per_block": None,
    "attention_type": "default",
    "resnet_skip_time_act": False,
    "resnet_out_scale_factor": 1.0,
    "cross_attention_norm": None,
    "mid_block_only_cross_attention": None,
    # LaVie's own switch: True would add an unused UNet-level bias table (keys the file lacks).
    "use_relative_position": False,
}


@dataclass(frozen=True)
class LaVieConfig:
    """What `LaVieUNet` needs. `num_heads` is SD 1.x's `attention_head_dim` (a head count)."""

    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    num_heads: int = 8
    cross_attention_dim: int = 768
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    downsample_padding: int = 1

    @property
    def head_dims(self) -> tuple[int, ...]:
        return tuple(c // self.num_heads for c in self.block_out_channels)


def _same(value, default) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_same(v, default) for v in value)
    if value is None and default is False:
        return True
    if isinstance(default, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) == default
    return value == default


def _single_int(config: dict, key: str, levels: int) -> int:
    """An int, or a per-level list whose entries are all the same int."""
    value = config[key]
    if isinstance(value, (list, tuple)):
        if len(value) != levels or len(set(value)) != 1:
            raise ValueError(f"LaVie config: {key}={value!r} must be one value for all {levels} levels")
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"LaVie config: {key}={value!r} must be an integer")
    return value


def lavie_config(sd14_style_config: Mapping | None = None) -> LaVieConfig:
    """Read an SD 1.4-style `unet/config.json` dict (as the official code does) into a `LaVieConfig`.

    Missing keys take SD 1.4's values; keys that do not shape the network (`sample_size`,
    `_class_name`, `_diffusers_version`, `use_first_frame`, `dropout`, ...) are ignored. A config
    that describes another network - not the 4-level SD 1.x block layout, linear projections,
    class embeddings, head dims below the 32 RoPE channels, ... - raises ValueError.
    """
    config = dict(LAVIE_BASE_UNET_CONFIG)
    config.update(sd14_style_config or {})

    channels = config["block_out_channels"]
    if not isinstance(channels, (list, tuple)) or len(channels) != 4:
        raise ValueError(f"LaVie config: block_out_channels={channels!r} must have 4 levels (SD 1.x layout)")
    channels = tuple(int(c) for c in channels)
    if list(config["down_block_types"]) not in _DOWN_LAYOUTS:
        raise ValueError(
            f"LaVie config: down_block_types={config['down_block_types']!r} is not the SD 1.x layout "
            f"(3 x CrossAttnDownBlock2D, then DownBlock2D)"
        )
    if list(config["up_block_types"]) not in _UP_LAYOUTS:
        raise ValueError(
            f"LaVie config: up_block_types={config['up_block_types']!r} is not the SD 1.x layout "
            f"(UpBlock2D, then 3 x CrossAttnUpBlock2D)"
        )
    if config.get("mid_block_type") not in _MID_TYPES:
        raise ValueError(
            f"LaVie config: mid_block_type={config['mid_block_type']!r} is not a cross-attention mid block"
        )
    for key, default in _FIXED_KEYS.items():
        if key in config and not _same(config[key], default):
            raise ValueError(f"LaVie config: {key}={config[key]!r} is not supported (LaVie base has {default!r})")

    heads = _single_int(config, "attention_head_dim", 4)
    # diffusers' newer name for the head count; upstream LaVie ignores it, so it may only agree.
    if config.get("num_attention_heads") is not None and _single_int(config, "num_attention_heads", 4) != heads:
        raise ValueError(
            f"LaVie config: num_attention_heads={config['num_attention_heads']!r} contradicts "
            f"attention_head_dim={config['attention_head_dim']!r} (the head count in SD 1.x configs)"
        )
    result = LaVieConfig(
        in_channels=int(config["in_channels"]),
        out_channels=int(config["out_channels"]),
        block_out_channels=channels,
        layers_per_block=_single_int(config, "layers_per_block", 4),
        num_heads=heads,
        cross_attention_dim=_single_int(config, "cross_attention_dim", 4),
        norm_num_groups=int(config["norm_num_groups"]),
        norm_eps=float(config["norm_eps"]),
        flip_sin_to_cos=bool(config["flip_sin_to_cos"]),
        freq_shift=int(config["freq_shift"]),
        downsample_padding=int(config["downsample_padding"]),
    )
    for c in channels:
        if c % result.norm_num_groups or c % heads:
            raise ValueError(
                f"LaVie config: {c} channels do not split into {result.norm_num_groups} groups and {heads} heads"
            )
        if c // heads < ROPE_DIM:
            raise ValueError(
                f"LaVie config: head dim {c // heads} ({c} channels / {heads} heads) is below the {ROPE_DIM} "
                "channels the temporal RoPE rotates"
            )
    return result


# --------------------------------------------------------------------------------- RoPE and bias


def rope_frequencies(device=None) -> torch.Tensor:
    """The 16 RoPE frequencies 1/10000^(2i/32), float32, computed as upstream (bit-identical)."""
    exponents = torch.arange(0, ROPE_DIM, 2, dtype=torch.float32, device=device) / ROPE_DIM
    return 1.0 / (ROPE_THETA**exponents)


def rope_cos_sin(frames: int, device=None, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotation angles, each (frames, 32): position p = 0..F-1 times each
    frequency, every frequency repeated for its (2i, 2i+1) channel pair. The angles are taken in
    float32 (float64 for a float64 `dtype`) and cast to `dtype`: upstream takes them in the dtype of
    its stored frequencies, which was float32 in training but becomes float16 in a float16 model."""
    work = torch.float64 if dtype == torch.float64 else torch.float32
    positions = torch.arange(frames, dtype=work, device=device)
    angles = (positions[:, None] * rope_frequencies(device).to(work)[None, :]).repeat_interleave(2, dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first 32 channels of `x` (..., F, head_dim) in interleaved pairs: (x_2i, x_2i+1)
    becomes (x_2i cos - x_2i+1 sin, x_2i+1 cos + x_2i sin). The other channels pass unchanged."""
    rotated, rest = x[..., :ROPE_DIM], x[..., ROPE_DIM:]
    even, odd = rotated.unflatten(-1, (-1, 2)).unbind(-1)
    turned = torch.stack((-odd, even), dim=-1).flatten(-2)  # the pair rotated by 90 degrees
    return torch.cat((rotated * cos + turned * sin, rest), dim=-1)


@functools.lru_cache(maxsize=16)
def relative_position_buckets(frames: int) -> torch.Tensor:
    """T5-style bucket index (frames, frames) for query i and key j (CPU, int64).

    With n = i - j (how far the key lies before the query): keys after the query (n < 0) use
    buckets 16..31, the others 0..15; |n| < 8 is its own bucket, larger distances share buckets
    logarithmically up to distance 32 (bucket 8 + floor(8 log(|n|/8) / log 4), at most 15).
    Computed in float64; it gives the same integers as upstream's float32 for every |n| < 100000.
    The table is cached and shared: do not modify it."""
    half = REL_POS_BUCKETS // 2
    exact = half // 2
    positions = torch.arange(frames)
    n = positions[:, None] - positions[None, :]
    bucket = (n < 0).long() * half
    n = n.abs()
    scale = (half - exact) / math.log(REL_POS_MAX_DISTANCE / exact)
    logarithmic = exact + (torch.log(n.clamp(min=exact).double() / exact) * scale).long()
    return bucket + torch.where(n < exact, n, logarithmic.clamp(max=half - 1))


class RelativePositionBias(nn.Module):
    """A learned (32 buckets, heads) table; gives the per-head (heads, F, F) score bias."""

    def __init__(self, heads: int):
        super().__init__()
        self.relative_attention_bias = nn.Embedding(REL_POS_BUCKETS, heads)

    def forward(self, frames: int) -> torch.Tensor:
        buckets = relative_position_buckets(frames).to(self.relative_attention_bias.weight.device)
        return self.relative_attention_bias(buckets).permute(2, 0, 1)


# --------------------------------------------------------------------------------- building blocks


def fold_frames(x: torch.Tensor) -> torch.Tensor:
    """(B, C, F, H, W) -> (B*F, C, H, W), frames of one video consecutive."""
    b, c, f, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)


def unfold_frames(x: torch.Tensor, frames: int) -> torch.Tensor:
    """(B*F, C, H, W) -> (B, C, F, H, W)."""
    bf, c, h, w = x.shape
    return x.reshape(bf // frames, frames, c, h, w).permute(0, 2, 1, 3, 4)


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm whose statistics are taken in float32 when the input is float16/bfloat16.

    On a 5-D (B, C, F, H, W) input the statistics of each group span all frames of the video, as in
    LaVie's resnets; on (B*F, C, H, W) they are per frame, as in its transformers' input norm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype not in (torch.float16, torch.bfloat16):
            return super().forward(x)
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


class FrameConv2d(nn.Conv2d):
    """A 2-D convolution applied to every frame of a (B, C, F, H, W) video."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return unfold_frames(super().forward(fold_frames(x)), x.shape[2])


class ResnetBlock(nn.Module):
    """norm1 -> SiLU -> conv1 -> + time embedding -> norm2 -> SiLU -> conv2, plus the skip (1x1
    conv_shortcut when the channel count changes). GroupNorms span the frames."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, groups: int, eps: float):
        super().__init__()
        self.norm1 = GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = FrameConv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = GroupNorm(groups, out_channels, eps=eps)
        self.conv2 = FrameConv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = FrameConv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """x (B, C_in, F, H, W), temb (B, temb_channels) -> (B, C_out, F, H, W)."""
        hidden = self.conv1(F.silu(self.norm1(x)))
        hidden = hidden + self.time_emb_proj(F.silu(temb))[:, :, None, None, None]
        hidden = self.conv2(F.silu(self.norm2(hidden)))
        skip = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        return skip + hidden


class Downsample(nn.Module):
    """3x3 convolution with stride 2, per frame."""

    def __init__(self, channels: int, padding: int):
        super().__init__()
        self.conv = FrameConv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 on height and width (or to `size`, the skip's size, when the latent
    sides are not multiples of 8), then a 3x3 convolution; frames untouched."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = FrameConv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        frames = x.shape[2]
        folded = fold_frames(x)
        if size is None:
            folded = F.interpolate(folded, scale_factor=2.0, mode="nearest")
        else:
            folded = F.interpolate(folded, size=size, mode="nearest")
        return self.conv(unfold_frames(folded, frames))


class GEGLUFeedForward(nn.Module):
    """Linear C -> 8C split into value and gate, value * GELU(gate) (exact GELU), Linear 4C -> C.
    `net.0.proj` and `net.2` are diffusers' FeedForward names; index 1 was its (no-op) dropout."""

    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.ModuleList([_GEGLUProjection(dim, 4 * dim), nn.Identity(), nn.Linear(4 * dim, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class _GEGLUProjection(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class SpatialAttention(nn.Module):
    """Multi-head attention over the tokens of each frame (self-attention) or to the text
    (cross-attention). q/k/v have no bias, to_out has one."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """x (N, L, C); context (N, S, D) or None for self-attention -> (N, L, C)."""
        context = x if context is None else context
        n, length, dim = x.shape
        q = self.to_q(x).view(n, length, self.heads, -1).transpose(1, 2)
        k = self.to_k(context).view(n, context.shape[1], self.heads, -1).transpose(1, 2)
        v = self.to_v(context).view(n, context.shape[1], self.heads, -1).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out[0](out.transpose(1, 2).reshape(n, length, dim))


class TemporalAttention(nn.Module):
    """Self-attention over the frames at each spatial position, with RoPE and a relative bias.

    scores = RoPE(q / sqrt(d)) . RoPE(k) + bias[head, i, j]; softmax over keys; to_out."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])
        self.time_rel_pos_bias = RelativePositionBias(heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, F, C) with N = videos * spatial positions -> (N, F, C)."""
        n, frames, dim = x.shape
        head_dim = dim // self.heads

        def split_heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(n, frames, self.heads, head_dim).transpose(1, 2)  # (N, heads, F, d)

        # Upstream scales q before the rotation; same order here so float32 results agree exactly.
        q = split_heads(self.to_q(x) * head_dim**-0.5)
        k = split_heads(self.to_k(x))
        v = split_heads(self.to_v(x))
        cos, sin = rope_cos_sin(frames, x.device, q.dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        # Half-precision scores get the bias and the softmax in float32; other dtypes stay as they are.
        work = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
        scores = (q @ k.transpose(-1, -2)).to(work) + self.time_rel_pos_bias(frames).to(work)
        probs = scores.softmax(dim=-1).to(v.dtype)
        out = (probs @ v).transpose(1, 2).reshape(n, frames, dim)
        return self.to_out[0](out)


class TransformerBlock(nn.Module):
    """norm1/attn1 (spatial self), norm2/attn2 (text), norm_temp/attn_temp (temporal), norm3/ff,
    each with a residual. Tokens are (B*F, h*w, C)."""

    def __init__(self, dim: int, heads: int, cross_attention_dim: int):
        super().__init__()
        self.attn1 = SpatialAttention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.attn2 = SpatialAttention(dim, heads, context_dim=cross_attention_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.attn_temp = TemporalAttention(dim, heads)
        self.norm_temp = nn.LayerNorm(dim)
        self.ff = GEGLUFeedForward(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, frames: int) -> torch.Tensor:
        """x (B*F, L, C), context (B, S, D) -> (B*F, L, C)."""
        bf, length, dim = x.shape
        videos = bf // frames
        x = self.attn1(self.norm1(x)) + x
        # Every frame of a video attends to the same text, and a query's attention does not depend
        # on the other queries: fold the frames into the query sequence instead of repeating the text.
        cross = self.attn2(self.norm2(x).reshape(videos, frames * length, dim), context)
        x = cross.reshape(bf, length, dim) + x
        # (B*F, L, C) -> (B*L, F, C): one sequence of frames per spatial position.
        t = x.view(videos, frames, length, dim).transpose(1, 2).reshape(videos * length, frames, dim)
        t = self.attn_temp(self.norm_temp(t)) + t
        x = t.view(videos, length, frames, dim).transpose(1, 2).reshape(bf, length, dim)
        return self.ff(self.norm3(x)) + x


class VideoTransformer(nn.Module):
    """`attentions.N`: per-frame GroupNorm (eps 1e-6) -> 1x1 proj_in -> TransformerBlock ->
    1x1 proj_out -> + input."""

    def __init__(self, channels: int, heads: int, cross_attention_dim: int, groups: int):
        super().__init__()
        self.norm = GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList([TransformerBlock(channels, heads, cross_attention_dim)])
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x (B, C, F, H, W), context (B, S, D) -> (B, C, F, H, W)."""
        b, c, frames, h, w = x.shape
        residual = fold_frames(x)
        hidden = self.proj_in(self.norm(residual))
        tokens = hidden.permute(0, 2, 3, 1).reshape(b * frames, h * w, c)
        for block in self.transformer_blocks:
            tokens = block(tokens, context, frames)
        # Back to a plain (B*F, C, H, W) layout: left as a channels-last view, the 1x1 conv would
        # return channels-last memory and the next frame-spanning GroupNorm would reduce over it with
        # a less accurate float32 kernel (measured: 3x the float32 error at 16 frames of 40x64).
        hidden = tokens.reshape(b * frames, h, w, c).permute(0, 3, 1, 2).contiguous()
        return unfold_frames(self.proj_out(hidden) + residual, frames)


class DownBlock(nn.Module):
    """`layers_per_block` resnets (each followed by a transformer on attention levels), then an
    optional stride-2 downsampler. Returns the output and every intermediate for the skips."""

    def __init__(self, cfg: LaVieConfig, in_channels: int, out_channels: int, attention: bool, downsample: bool):
        super().__init__()
        temb = cfg.block_out_channels[0] * 4
        # Registered in upstream's order (attentions, resnets, sampler), so state dicts list alike.
        self.attentions = None
        if attention:
            self.attentions = nn.ModuleList(
                VideoTransformer(out_channels, cfg.num_heads, cfg.cross_attention_dim, cfg.norm_num_groups)
                for _ in range(cfg.layers_per_block)
            )
        self.resnets = nn.ModuleList(
            ResnetBlock(in_channels if i == 0 else out_channels, out_channels, temb, cfg.norm_num_groups, cfg.norm_eps)
            for i in range(cfg.layers_per_block)
        )
        self.downsamplers = nn.ModuleList([Downsample(out_channels, cfg.downsample_padding)]) if downsample else None

    def forward(self, x, temb, context) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class MidBlock(nn.Module):
    """resnet -> transformer -> resnet at the deepest level."""

    def __init__(self, cfg: LaVieConfig):
        super().__init__()
        channels = cfg.block_out_channels[-1]
        temb = cfg.block_out_channels[0] * 4
        self.attentions = nn.ModuleList(
            [VideoTransformer(channels, cfg.num_heads, cfg.cross_attention_dim, cfg.norm_num_groups)]
        )
        self.resnets = nn.ModuleList(
            ResnetBlock(channels, channels, temb, cfg.norm_num_groups, cfg.norm_eps) for _ in range(2)
        )

    def forward(self, x, temb, context) -> torch.Tensor:
        x = self.resnets[0](x, temb)
        x = self.attentions[0](x, context)
        return self.resnets[1](x, temb)


class UpBlock(nn.Module):
    """`layers_per_block + 1` resnets, each taking the last skip concatenated on channels (and
    followed by a transformer on attention levels), then an optional upsampler."""

    def __init__(
        self,
        cfg: LaVieConfig,
        prev_channels: int,
        out_channels: int,
        skip_in_channels: int,
        attention: bool,
        upsample: bool,
    ):
        super().__init__()
        temb = cfg.block_out_channels[0] * 4
        layers = cfg.layers_per_block + 1
        self.attentions = None
        if attention:
            self.attentions = nn.ModuleList(
                VideoTransformer(out_channels, cfg.num_heads, cfg.cross_attention_dim, cfg.norm_num_groups)
                for _ in range(layers)
            )
        resnets = []
        for i in range(layers):
            skip_channels = skip_in_channels if i == layers - 1 else out_channels
            in_channels = prev_channels if i == 0 else out_channels
            resnets.append(
                ResnetBlock(in_channels + skip_channels, out_channels, temb, cfg.norm_num_groups, cfg.norm_eps)
            )
        self.resnets = nn.ModuleList(resnets)
        self.upsamplers = nn.ModuleList([Upsample(out_channels)]) if upsample else None

    def forward(self, x, temb, context, skips: list[torch.Tensor], size: tuple[int, int] | None) -> torch.Tensor:
        for i, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips.pop()], dim=1), temb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, size)
        return x


# --------------------------------------------------------------------------------- the UNet


class LaVieUNet(nn.Module):
    """LaVie base's video UNet: forward(sample (B, 4, F, h, w), timestep, text (B, 77, 768)) -> noise
    prediction (B, 4, F, h, w). Built from a `LaVieConfig` or an SD 1.4-style config dict (None =
    the published model)."""

    def __init__(self, config: LaVieConfig | Mapping | None = None):
        super().__init__()
        from diffusers.models.embeddings import TimestepEmbedding, Timesteps

        cfg = config if isinstance(config, LaVieConfig) else lavie_config(config)
        self.config = cfg
        channels = cfg.block_out_channels
        levels = len(channels)

        self.conv_in = FrameConv2d(cfg.in_channels, channels[0], 3, padding=1)
        # Sinusoid (cosines first for SD) then Linear-SiLU-Linear: diffusers' classes, the same maths.
        self.time_proj = Timesteps(channels[0], cfg.flip_sin_to_cos, cfg.freq_shift)
        self.time_embedding = TimestepEmbedding(channels[0], channels[0] * 4)

        self.down_blocks = nn.ModuleList(
            DownBlock(
                cfg,
                channels[max(i - 1, 0)],
                channels[i],
                attention=i < levels - 1,
                downsample=i < levels - 1,
            )
            for i in range(levels)
        )
        up = list(reversed(channels))
        self.up_blocks = nn.ModuleList(
            UpBlock(
                cfg,
                prev_channels=up[max(i - 1, 0)],
                out_channels=up[i],
                skip_in_channels=up[min(i + 1, levels - 1)],
                attention=i > 0,
                upsample=i < levels - 1,
            )
            for i in range(levels)
        )
        # Registered after the up blocks, as upstream does: the state dict then lists the keys in
        # the order of the published file.
        self.mid_block = MidBlock(cfg)
        self.conv_norm_out = GroupNorm(cfg.norm_num_groups, channels[0], eps=cfg.norm_eps)
        self.conv_out = FrameConv2d(channels[0], cfg.out_channels, 3, padding=1)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv_in.weight.device

    def temporal_attention_names(self) -> list[str]:
        """Module names of the 16 temporal attentions (`...transformer_blocks.0.attn_temp`)."""
        return [name for name, module in self.named_modules() if isinstance(module, TemporalAttention)]

    def file_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict as `lavie_base.pt` has it: `state_dict()` plus the RoPE frequencies under
        each temporal attention's `rotary_emb.freqs` (830 keys for the published config)."""
        state = self.state_dict()
        freqs = rope_frequencies()
        ordered: dict[str, torch.Tensor] = {}
        for name, value in state.items():
            ordered[name] = value
            if name.endswith("attn_temp.time_rel_pos_bias.relative_attention_bias.weight"):
                prefix = name[: -len("time_rel_pos_bias.relative_attention_bias.weight")]
                ordered[prefix + "rotary_emb.freqs"] = freqs.clone()
        return ordered

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor | int | float, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        """sample (B, C_in, F, h, w); timestep an int/float, a 0-d tensor or a (B,) / (1,) tensor;
        encoder_hidden_states (B, 77, cross_attention_dim), one per video. Returns (B, C_out, F, h, w)."""
        if sample.ndim != 5:
            raise ValueError(f"LaVieUNet expects a (B, C, F, h, w) sample, got shape {tuple(sample.shape)}")
        batch = sample.shape[0]
        if encoder_hidden_states.shape[0] != batch:
            raise ValueError(
                f"encoder_hidden_states has {encoder_hidden_states.shape[0]} rows for {batch} videos "
                "(one text embedding per video; frames share it)"
            )
        timesteps = torch.as_tensor(timestep, device=sample.device)
        if timesteps.ndim == 0:
            timesteps = timesteps[None]
        timesteps = timesteps.to(sample.device).expand(batch)
        temb = self.time_embedding(self.time_proj(timesteps).to(self.dtype))
        context = encoder_hidden_states.to(self.dtype)

        # Sides that are not multiples of 2^(levels-1): each upsampler goes to its skip's exact size.
        factor = 2 ** (len(self.up_blocks) - 1)
        forward_sizes = any(s % factor for s in sample.shape[-2:])

        x = self.conv_in(sample.to(self.dtype))
        skips = [x]
        for block in self.down_blocks:
            x, block_skips = block(x, temb, context)
            skips.extend(block_skips)
        x = self.mid_block(x, temb, context)
        for block in self.up_blocks:
            block_skips = [skips.pop() for _ in range(len(block.resnets))][::-1]
            size = tuple(skips[-1].shape[-2:]) if forward_sizes and block.upsamplers is not None else None
            x = block(x, temb, context, block_skips, size)
        x = F.silu(self.conv_norm_out(x))
        return self.conv_out(x)


# --------------------------------------------------------------------------------- loading helpers


def is_temporal_key(name: str) -> bool:
    """True for LaVie's temporal parameters (the 144 `_temp` keys of the file)."""
    return "_temp" in name


def split_rope_freqs(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split a `lavie_base.pt` state dict into (everything `LaVieUNet` loads, the RoPE frequency
    entries `...attn_temp.rotary_emb.freqs`). Order is kept."""
    rest: dict[str, torch.Tensor] = {}
    freqs: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        (freqs if name.endswith(ROPE_FREQS_SUFFIX) else rest)[name] = value
    return rest, freqs


def check_rope_freqs(freqs: Mapping[str, torch.Tensor], model: LaVieUNet | None = None) -> None:
    """Raise ValueError unless every entry is the RoPE constant (to the precision of its dtype, so a
    float16 copy of the file passes) and, when `model` is given, there is exactly one entry for each
    of its temporal attentions."""
    expected = rope_frequencies()
    if model is not None:
        wanted = {f"{name}.rotary_emb.freqs" for name in model.temporal_attention_names()}
        missing, extra = sorted(wanted - set(freqs)), sorted(set(freqs) - wanted)
        if missing or extra:
            raise ValueError(f"RoPE frequency entries do not match the model: missing {missing[:3]}, extra {extra[:3]}")
    for name, value in freqs.items():
        if tuple(value.shape) != tuple(expected.shape):
            raise ValueError(f"{name}: shape {tuple(value.shape)}, expected ({ROPE_DIM // 2},)")
        tolerance = 4 * torch.finfo(value.dtype).eps if value.is_floating_point() else 0.0
        if not torch.allclose(value.detach().float().cpu(), expected, rtol=tolerance, atol=0.0):
            raise ValueError(f"{name}: RoPE frequencies differ from 1/10000^(2i/32); not a LaVie base file")
