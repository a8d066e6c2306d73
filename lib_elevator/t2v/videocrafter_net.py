"""VideoCrafter2 (t2v 512 v2.0) as plain torch modules: the video UNet, the OpenCLIP text tower, the
VAE conversion and the signal-rescaled DDIM schedule.

The published `model.ckpt` is a whole ldm LatentDiffusion state dict (2,039 tensors):
- `model.diffusion_model.*` (1,484): an SD 2.x-shaped UNet in the ldm (CompVis) layout with temporal
  layers slotted in. Every ResBlock ends with a temporal convolution block (its checkpoint name is
  misspelt `temopral_conv`), every spatial transformer is followed by a temporal transformer (the
  `.2.` slot of its block), one extra temporal transformer (`init_attn.0`) follows the first
  convolution, and the frame rate is embedded like the timestep (`fps_embedding`) and added to it.
  `VideoCrafterUNet` uses exactly these names, so those tensors load with strict=True;
- `first_stage_model.*` (248): SD's kl-f8 VAE in ldm naming; `vc2_vae` converts it to diffusers'
  AutoencoderKL (the same maths);
- `cond_stage_model.model.*` (294): an OpenCLIP ViT-H/14 text tower (the visual tower was dropped);
  `OpenCLIPTextTower` keeps open_clip's names and reads its penultimate layer;
- 13 schedule buffers (`vc2_schedule_buffers`), which inference only needs as the formulas below.

Noise schedule: SD's scaled-linear betas, plus a signal rescale s_t (1 -> 0.7 over t = 0..399, then
0.7) that the model was trained with: x_t = s_t * sqrt(a_t) * x0 + sqrt(1 - a_t) * eps. The DDIM
update has to apply s_t as well (`vc2_add_noise`, `vc2_ddim_step`).

Nothing here reads files: the configs are dicts (a loaded inference yaml or open_clip model config).
"""

from __future__ import annotations

import functools
import html
import math
import unicodedata

import torch
import torch.nn.functional as F
from torch import nn

# ---------------------------------------------------------------------------------- configs

# `model.params.unet_config.params` of the official configs/inference_t2v_512_v2.0.yaml.
VC2_UNET_CONFIG = {
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "attention_resolutions": [4, 2, 1],
    "num_res_blocks": 2,
    "channel_mult": [1, 2, 4, 4],
    "num_head_channels": 64,
    "transformer_depth": 1,
    "context_dim": 1024,
    "use_linear": True,
    "use_checkpoint": True,
    "temporal_conv": True,
    "temporal_attention": True,
    "temporal_selfatt_only": True,
    "use_relative_position": False,
    "use_causal_attention": False,
    "temporal_length": 16,
    "addition_attention": True,
    "fps_cond": True,
}

# The numbers that size the network, with the official UNetModel's defaults where a yaml may omit them.
_UNET_SIZES = {
    "in_channels": None,
    "out_channels": None,
    "model_channels": None,
    "attention_resolutions": None,
    "num_res_blocks": None,
    "channel_mult": (1, 2, 4, 8),
    "num_head_channels": -1,
    "transformer_depth": 1,
    "temporal_transformer_depth": 1,
    "context_dim": None,
}

# Switches of the official UNetModel that select a different network. Each maps to
# (the value VideoCrafter2 uses, the official default when the yaml omits it). Only VC2's is built.
_UNET_SWITCHES = {
    "use_linear": (True, False),
    "temporal_conv": (True, False),
    "temporal_attention": (True, True),
    "temporal_selfatt_only": (True, True),
    "use_relative_position": (False, True),
    "use_causal_attention": (False, False),
    "addition_attention": (True, False),
    "fps_cond": (True, False),
    "tempspatial_aware": (False, False),
    "use_scale_shift_norm": (False, False),
    "resblock_updown": (False, False),
    "use_image_attention": (False, False),
    "conv_resample": (True, True),
    "dims": (2, 2),
}
# Keys that change nothing at inference: use_checkpoint (training memory), temporal_length (only read by
# relative positions and causal masks, both refused), dropout (eval mode), use_fp16 (the caller's dtype
# wins), num_heads (num_head_channels decides when set). Any other unknown key is ignored as well.

# The first_stage_config.params of the official yaml (SD's kl-f8 VAE).
VC2_VAE_PARAMS = {
    "embed_dim": 4,
    "ddconfig": {
        "double_z": True,
        "z_channels": 4,
        "resolution": 512,
        "in_channels": 3,
        "out_ch": 3,
        "ch": 128,
        "ch_mult": [1, 2, 4, 4],
        "num_res_blocks": 2,
        "attn_resolutions": [],
        "dropout": 0.0,
    },
}
VC2_SCALE_FACTOR = 0.18215

# The text_cfg of open_clip's ViT-H-14 model config, plus its embed_dim (the width of text_projection).
OPENCLIP_VIT_H_14_TEXT = {
    "context_length": 77,
    "vocab_size": 49408,
    "width": 1024,
    "heads": 16,
    "layers": 24,
    "mlp_ratio": 4.0,
    "embed_dim": 1024,
}

# Key prefixes of the checkpoint's parts.
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.model."
SCHEDULE_BUFFERS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "scale_arr",
)

DEFAULT_FPS = 28  # the official text-to-video script's fps condition


def check_unet_params(params: dict, source: str = "the UNet config") -> dict:
    """Validate a `unet_config.params` dict (yaml naming) and return the sizes `VideoCrafterUNet`
    needs. Raises ValueError for anything that would build a network other than VideoCrafter2's."""
    if not isinstance(params, dict):
        raise ValueError(f"{source}: expected a mapping of UNet parameters, got {type(params).__name__}")
    if params.get("use_relative_position", _UNET_SWITCHES["use_relative_position"][1]):
        raise ValueError(
            f"{source}: use_relative_position is true, which is VideoCrafter1 (relative-position temporal "
            "attention, no temporal convolutions, no fps condition); only VideoCrafter2 "
            "(inference_t2v_512_v2.0.yaml) is supported"
        )
    for key, (wanted, default) in _UNET_SWITCHES.items():
        value = params.get(key, default)
        if value != wanted:
            raise ValueError(
                f"{source}: {key} = {value!r} is not supported; VideoCrafter2 uses {key} = {wanted!r} "
                "(is this a different VideoCrafter model, e.g. VideoCrafter1 or the image-to-video one?)"
            )
    sizes = {key: params.get(key, default) for key, default in _UNET_SIZES.items()}
    missing = [key for key, value in sizes.items() if value is None]
    if missing:
        raise ValueError(f"{source}: missing {', '.join(missing)}")
    if sizes["num_head_channels"] in (-1, None):
        raise ValueError(f"{source}: num_head_channels must be set (VideoCrafter2 uses 64-channel heads)")
    for key in ("in_channels", "out_channels", "model_channels", "num_res_blocks", "num_head_channels", "context_dim"):
        if not isinstance(sizes[key], int) or sizes[key] < 1:
            raise ValueError(f"{source}: {key} must be a positive integer, got {sizes[key]!r}")
    sizes["channel_mult"] = tuple(int(m) for m in sizes["channel_mult"])
    sizes["attention_resolutions"] = tuple(int(r) for r in sizes["attention_resolutions"])
    for mult in sizes["channel_mult"]:
        width = mult * sizes["model_channels"]
        if width % 32 or width % sizes["num_head_channels"]:
            raise ValueError(
                f"{source}: every level's width must be a multiple of 32 (GroupNorm) and of num_head_channels; "
                f"{width} is not"
            )
    return sizes


def read_vc2_config(config: dict, source: str = "the model config") -> dict:
    """What the networks and the schedule need from an official inference yaml (loaded as a dict):
    `unet` (checked by `check_unet_params`), `first_stage` (the VAE's params), `scale_factor`,
    `text_arch` (an open_clip model name, "ViT-H-14" by default), `text_layer`, `timesteps`,
    `linear_start`, `linear_end`, `scale_b`, `mid_step`. Raises ValueError for other models."""
    model = config.get("model") if isinstance(config, dict) else None
    params = (model or {}).get("params")
    if not isinstance(params, dict) or not isinstance(params.get("unet_config"), dict):
        raise ValueError(f"{source}: not a VideoCrafter inference config (model.params.unet_config is missing)")
    target = str(model.get("target", ""))
    if not target.endswith(".LatentDiffusion"):
        raise ValueError(f"{source}: model.target {target!r} is not VideoCrafter2's text-to-video LatentDiffusion")
    unet = check_unet_params(params["unet_config"].get("params") or {}, source)
    checks = {
        "use_scale": (True, False),  # VC2 was trained with the signal rescale
        "parameterization": ("eps", "eps"),
        "scale_by_std": (False, False),
        "conditioning_key": ("crossattn", "crossattn"),
    }
    for key, (wanted, default) in checks.items():
        if params.get(key, default) != wanted:
            raise ValueError(
                f"{source}: {key} = {params.get(key, default)!r} is not supported (VideoCrafter2: {wanted!r})"
            )
    text = params.get("cond_stage_config") or {}
    if not str(text.get("target", "")).endswith("FrozenOpenCLIPEmbedder"):
        raise ValueError(f"{source}: the text encoder must be FrozenOpenCLIPEmbedder, not {text.get('target')!r}")
    text_params = text.get("params") or {}
    layer = text_params.get("layer", "last")
    if layer not in ("penultimate", "last"):
        raise ValueError(f"{source}: text encoder layer {layer!r} is not supported")
    return {
        "unet": unet,
        "first_stage": (params.get("first_stage_config") or {}).get("params") or VC2_VAE_PARAMS,
        "scale_factor": float(params.get("scale_factor", 1.0)),
        "text_arch": str(text_params.get("arch", "ViT-H-14")),
        "text_layer": layer,
        "timesteps": int(params.get("timesteps", 1000)),
        "linear_start": float(params.get("linear_start", 1e-4)),
        "linear_end": float(params.get("linear_end", 2e-2)),
        "scale_b": float(params.get("scale_b", 0.3)),
        "mid_step": int(params.get("mid_step", 400)),
    }


# ---------------------------------------------------------------------------------- building blocks


def timestep_embedding(values: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (B,) -> (B, dim), cosines first, computed in float32 as the model was
    trained (float64 angles would differ by up to ~1e-4 rad at t ~ 1000)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=values.device) / half)
    angles = values.float()[:, None] * freqs[None]
    embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with float32 statistics whatever the tensor's dtype (float16 variances over large
    feature maps lose too much; the official resnet and output norms are float32 too)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


def to_video(x: torch.Tensor, frames: int) -> torch.Tensor:
    """(B*F, C, h, w) -> (B, C, F, h, w)."""
    bf, c, h, w = x.shape
    return x.reshape(bf // frames, frames, c, h, w).permute(0, 2, 1, 3, 4)


def to_frames(x: torch.Tensor) -> torch.Tensor:
    """(B, C, F, h, w) -> (B*F, C, h, w)."""
    b, c, f, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)


# The temporal attention runs one sequence per pixel (batch x h x w sequences at level 0). CUDA grids are
# limited to 65,535 blocks in some dimensions, and some attention kernels have put batch x heads there, so
# very large calls are split as a precaution (attention is per sequence: the result is the same).
MAX_ATTENTION_BATCH = 32768


class Attention(nn.Module):
    """Multi-head attention with ldm names: to_q/to_k/to_v without bias, to_out.0 with bias.
    `context` None = self-attention."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int | None = None):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim))  # the official index 1 is a parameter-free dropout

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """x (N, L, dim), context (N, S, context_dim) -> (N, L, dim)."""
        source = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(source), self.to_v(source)
        n, length, inner = q.shape

        def heads_first(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(n, t.shape[1], self.heads, inner // self.heads).transpose(1, 2)

        q, k, v = heads_first(q), heads_first(k), heads_first(v)
        step = max(1, MAX_ATTENTION_BATCH // self.heads)
        if n <= step:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = torch.cat(
                [
                    F.scaled_dot_product_attention(q[i : i + step], k[i : i + step], v[i : i + step])
                    for i in range(0, n, step)
                ]
            )
        return self.to_out(out.transpose(1, 2).reshape(n, length, inner))


class GEGLU(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        # net.1 is the official (parameter-free) dropout slot; keeping it keeps net.2's name.
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Identity(), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """attn1 (self), attn2 (cross-attention to `context`, or a second self-attention when
    context_dim is None), GEGLU feed-forward; pre-LayerNorm with residuals."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int | None):
        super().__init__()
        self.attn1 = Attention(dim, heads, head_dim)
        self.ff = FeedForward(dim)
        self.attn2 = Attention(dim, heads, head_dim, context_dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """SD 2.x's transformer over the pixels of each frame: GroupNorm, Linear in, blocks, Linear out,
    residual. Input (N, C, h, w) with text context (N, 77, context_dim)."""

    def __init__(self, channels: int, heads: int, head_dim: int, depth: int, context_dim: int):
        super().__init__()
        inner = heads * head_dim
        self.norm = GroupNorm32(32, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList(
            [TransformerBlock(inner, heads, head_dim, context_dim) for _ in range(depth)]
        )
        self.proj_out = nn.Linear(inner, channels)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        y = self.proj_in(self.norm(x).permute(0, 2, 3, 1).reshape(n, h * w, c))
        for block in self.transformer_blocks:
            y = block(y, context)
        y = self.proj_out(y)
        return x + y.reshape(n, h, w, c).permute(0, 3, 1, 2)


class TemporalTransformer(nn.Module):
    """A transformer along the frames of each pixel: GroupNorm over the whole video (its statistics
    span the frames), projection in, blocks whose two attentions are both self-attention over the
    frames, projection out, residual. No positional term of any kind.

    The blocks' projections are Linear layers, except for `init_attn`, whose official module was built
    with 1x1 Conv1d layers (kernel (out, in, 1)); those are applied as the same matrix product."""

    def __init__(self, channels: int, heads: int, head_dim: int, depth: int, conv_projections: bool = False):
        super().__init__()
        inner = heads * head_dim
        self.norm = GroupNorm32(32, channels, eps=1e-6)
        if conv_projections:
            self.proj_in = nn.Conv1d(channels, inner, 1)
            self.proj_out = nn.Conv1d(inner, channels, 1)
        else:
            self.proj_in = nn.Linear(channels, inner)
            self.proj_out = nn.Linear(inner, channels)
        self.transformer_blocks = nn.ModuleList([TransformerBlock(inner, heads, head_dim, None) for _ in range(depth)])

    @staticmethod
    def _project(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if isinstance(layer, nn.Conv1d):
            return F.linear(x, layer.weight[:, :, 0], layer.bias)
        return layer(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, F, h, w) -> same shape."""
        b, c, f, h, w = x.shape
        y = self.norm(x).permute(0, 3, 4, 2, 1).reshape(b * h * w, f, c)
        y = self._project(self.proj_in, y)
        for block in self.transformer_blocks:
            y = block(y)
        y = self._project(self.proj_out, y)
        return x + y.reshape(b, h, w, f, c).permute(0, 4, 3, 1, 2)


class TemporalConvBlock(nn.Module):
    """Four GroupNorm -> SiLU -> Conv3d (3, 1, 1) stages along the frames, plus the input. The
    convolutions pad the frame axis with zeros, which is what tells the first and last frames apart
    (the temporal attention has no position term). Index 2 of conv2..4 is the dropout slot."""

    def __init__(self, channels: int):
        super().__init__()

        def stage(with_dropout_slot: bool) -> nn.Sequential:
            layers = [GroupNorm32(32, channels), nn.SiLU()]
            if with_dropout_slot:
                layers.append(nn.Identity())
            layers.append(nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0)))
            return nn.Sequential(*layers)

        self.conv1 = stage(False)
        self.conv2 = stage(True)
        self.conv3 = stage(True)
        self.conv4 = stage(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, F, h, w) -> same shape."""
        return self.conv4(self.conv3(self.conv2(self.conv1(x)))) + x


class ResBlock(nn.Module):
    """SD's ResBlock (ldm names), followed by the temporal convolution block on the whole video."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int):
        super().__init__()
        self.in_layers = nn.Sequential(
            GroupNorm32(32, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            GroupNorm32(32, out_channels), nn.SiLU(), nn.Identity(), nn.Conv2d(out_channels, out_channels, 3, padding=1)
        )
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        self.temopral_conv = TemporalConvBlock(out_channels)  # sic: the checkpoint's spelling

    def forward(self, x: torch.Tensor, emb: torch.Tensor, frames: int) -> torch.Tensor:
        """x (B*F, C, h, w), emb (B*F, emb_channels) -> (B*F, out_channels, h, w)."""
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        h = self.skip_connection(x) + self.out_layers(h)
        return to_frames(self.temopral_conv(to_video(h, frames)))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour upsampling to the size of the skip connection it meets, then a 3x3 conv.
    For latents divisible by 8 that is exactly x2 (the only sizes the official code runs); other
    sizes work as in diffusers' UNets instead of failing at the concatenation."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        size = tuple(size) if size is not None else (x.shape[-2] * 2, x.shape[-1] * 2)
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class Block(nn.ModuleList):
    """The layers of one ldm block (`input_blocks.N`, `middle_block`, `output_blocks.N`); the list
    index is the key index. Frames are folded into the batch except inside temporal layers."""

    def forward(self, x, emb, context, frames: int, upsample_size=None):
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb, frames)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            elif isinstance(layer, TemporalTransformer):
                x = to_frames(layer(to_video(x, frames)))
            elif isinstance(layer, Upsample):
                x = layer(x, upsample_size)
            else:
                x = layer(x)
        return x


def _batch_values(value, batch: int, device: torch.device) -> torch.Tensor:
    """An int, float, 0-d or (B,) tensor as a (B,) tensor."""
    tensor = torch.as_tensor(value, device=device)
    if tensor.ndim == 0:
        tensor = tensor.expand(batch)
    if tensor.shape != (batch,):
        raise ValueError(f"expected one value or {batch} values, got shape {tuple(tensor.shape)}")
    return tensor


# ---------------------------------------------------------------------------------- the UNet


class VideoCrafterUNet(nn.Module):
    """The VideoCrafter2 video UNet; state-dict names are those under `model.diffusion_model.` of the
    official checkpoint. `params` is a `unet_config.params` dict (yaml naming, see VC2_UNET_CONFIG)."""

    def __init__(self, params: dict | None = None):
        super().__init__()
        sizes = check_unet_params(params if params is not None else VC2_UNET_CONFIG)
        self.config = sizes
        mc = sizes["model_channels"]
        head_channels = sizes["num_head_channels"]
        emb_channels = mc * 4
        context_dim = sizes["context_dim"]

        def attention_pair(channels: int) -> list[nn.Module]:
            heads = channels // head_channels
            return [
                SpatialTransformer(channels, heads, head_channels, sizes["transformer_depth"], context_dim),
                TemporalTransformer(channels, heads, head_channels, sizes["temporal_transformer_depth"]),
            ]

        self.time_embed = nn.Sequential(nn.Linear(mc, emb_channels), nn.SiLU(), nn.Linear(emb_channels, emb_channels))
        self.fps_embedding = nn.Sequential(
            nn.Linear(mc, emb_channels), nn.SiLU(), nn.Linear(emb_channels, emb_channels)
        )

        self.input_blocks = nn.ModuleList([Block([nn.Conv2d(sizes["in_channels"], mc, 3, padding=1)])])
        # The extra temporal transformer after the first conv: 8 heads of num_head_channels, whatever
        # the width (so 512 wide over 320 channels in VC2), with Conv1d projections.
        self.init_attn = Block([TemporalTransformer(mc, 8, head_channels, sizes["transformer_depth"], True)])

        channels, rate = mc, 1
        skip_channels = [mc]
        levels = len(sizes["channel_mult"])
        for level, mult in enumerate(sizes["channel_mult"]):
            for _ in range(sizes["num_res_blocks"]):
                layers: list[nn.Module] = [ResBlock(channels, emb_channels, mult * mc)]
                channels = mult * mc
                if rate in sizes["attention_resolutions"]:
                    layers += attention_pair(channels)
                self.input_blocks.append(Block(layers))
                skip_channels.append(channels)
            if level != levels - 1:
                self.input_blocks.append(Block([Downsample(channels)]))
                skip_channels.append(channels)
                rate *= 2

        self.middle_block = Block(
            [
                ResBlock(channels, emb_channels, channels),
                *attention_pair(channels),
                ResBlock(channels, emb_channels, channels),
            ]
        )

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(sizes["channel_mult"]))):
            for i in range(sizes["num_res_blocks"] + 1):
                layers = [ResBlock(channels + skip_channels.pop(), emb_channels, mult * mc)]
                channels = mult * mc
                if rate in sizes["attention_resolutions"]:
                    layers += attention_pair(channels)
                if level and i == sizes["num_res_blocks"]:
                    layers.append(Upsample(channels))
                    rate //= 2
                self.output_blocks.append(Block(layers))

        self.out = nn.Sequential(
            GroupNorm32(32, channels), nn.SiLU(), nn.Conv2d(mc, sizes["out_channels"], 3, padding=1)
        )

    @property
    def dtype(self) -> torch.dtype:
        return self.out[2].weight.dtype

    def forward(self, x: torch.Tensor, timesteps, context: torch.Tensor, fps=DEFAULT_FPS) -> torch.Tensor:
        """Noise prediction.

        x: (B, in_channels, F, h, w) video latents; timesteps: int or (B,); context: (B, 77,
        context_dim) text embeddings, one per video (shared by its frames); fps: int or (B,), the
        frame-rate condition. Returns (B, out_channels, F, h, w) in the model's dtype.
        """
        if x.ndim != 5 or x.shape[1] != self.config["in_channels"]:
            raise ValueError(f"expected video latents (B, {self.config['in_channels']}, F, h, w); got {tuple(x.shape)}")
        b, c, frames, h, w = x.shape
        if context.ndim != 3 or context.shape[0] != b or context.shape[2] != self.config["context_dim"]:
            raise ValueError(
                f"expected a text context (B={b}, tokens, {self.config['context_dim']}); got {tuple(context.shape)}"
            )
        dtype, mc = self.dtype, self.config["model_channels"]
        timesteps = _batch_values(timesteps, b, x.device)
        fps = _batch_values(fps, b, x.device)
        emb = self.time_embed(timestep_embedding(timesteps, mc).to(dtype))
        emb = emb + self.fps_embedding(timestep_embedding(fps, mc).to(dtype))
        # Frames travel folded into the batch; each frame gets its video's embedding and text.
        emb = emb.repeat_interleave(frames, dim=0)
        context = context.to(dtype).repeat_interleave(frames, dim=0)

        hidden = to_frames(x.to(dtype))
        skips = []
        for index, block in enumerate(self.input_blocks):
            hidden = block(hidden, emb, context, frames)
            if index == 0:
                hidden = self.init_attn(hidden, emb, context, frames)
            skips.append(hidden)
        hidden = self.middle_block(hidden, emb, context, frames)
        for block in self.output_blocks:
            hidden = torch.cat([hidden, skips.pop()], dim=1)
            hidden = block(hidden, emb, context, frames, skips[-1].shape[-2:] if skips else None)
        return to_video(self.out(hidden), frames)


# ---------------------------------------------------------------------------------- text tower


def text_config_from_open_clip(model_config: dict, source: str = "the open_clip model config") -> dict:
    """The tower's config from an open_clip model config (the JSON format of open_clip's
    model_configs: `embed_dim` plus `text_cfg`). Options that change the maths are refused."""
    text = model_config.get("text_cfg") if isinstance(model_config, dict) else None
    if not isinstance(text, dict):
        raise ValueError(f"{source}: no text_cfg")
    if model_config.get("quick_gelu"):
        raise ValueError(f"{source}: quick_gelu towers are not supported (VideoCrafter2 uses exact GELU)")
    refused = {
        "hf_model_name": None,
        "ls_init_value": None,
        "embed_cls": False,
        "no_causal_mask": False,
        "proj_bias": False,
        "final_ln_after_pool": False,
        "act_kwargs": None,
        "norm_kwargs": None,
    }
    for key, default in refused.items():
        if text.get(key, default) not in (default, {}):
            raise ValueError(f"{source}: text_cfg.{key} = {text[key]!r} is not supported")
    return {
        "context_length": int(text.get("context_length", 77)),
        "vocab_size": int(text.get("vocab_size", 49408)),
        "width": int(text.get("width", 512)),
        "heads": int(text.get("heads", 8)),
        "layers": int(text.get("layers", 12)),
        "mlp_ratio": float(text.get("mlp_ratio", 4.0)),
        "embed_dim": int(model_config.get("embed_dim", text.get("width", 512))),
    }


class PackedSelfAttention(nn.Module):
    """Causal multi-head self-attention with torch.nn.MultiheadAttention's parameter names
    (in_proj_weight/in_proj_bias packing q, k, v; out_proj), as open_clip stores them."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, L, width) -> (B, L, width); token i sees tokens 0..i."""
        b, length, width = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, length, self.heads, width // self.heads).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(out.transpose(1, 2).reshape(b, length, width))


class TextMLP(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))


class TextBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = PackedSelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = TextMLP(width, int(width * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TextBlocks(nn.Module):
    """Holds `resblocks` so the names read `transformer.resblocks.N.*` as in open_clip."""

    def __init__(self, width: int, heads: int, layers: int, mlp_ratio: float):
        super().__init__()
        self.resblocks = nn.ModuleList([TextBlock(width, heads, mlp_ratio) for _ in range(layers)])


class OpenCLIPTextTower(nn.Module):
    """The OpenCLIP text transformer with open_clip's names (as under `cond_stage_model.model.` of the
    checkpoint). `config`: width, heads, layers, context_length, vocab_size, mlp_ratio, embed_dim
    (see OPENCLIP_VIT_H_14_TEXT, `text_config_from_open_clip`).

    `text_projection` and `logit_scale` are kept as parameters although the video model never uses
    them: the checkpoint holds them, and keeping them lets all 294 tensors load with strict=True (they
    cost 4 MB at ViT-H size). The last residual block is kept for the same reason; `encode` skips it.
    """

    def __init__(self, config: dict | None = None):
        super().__init__()
        config = dict(OPENCLIP_VIT_H_14_TEXT if config is None else config)
        width, heads, layers = int(config["width"]), int(config["heads"]), int(config["layers"])
        if width % heads:
            raise ValueError(f"text tower width {width} is not divisible by its {heads} heads")
        self.config = config
        self.token_embedding = nn.Embedding(int(config["vocab_size"]), width)
        self.positional_embedding = nn.Parameter(torch.empty(int(config["context_length"]), width))
        self.transformer = TextBlocks(width, heads, layers, float(config.get("mlp_ratio", 4.0)))
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, int(config.get("embed_dim", width))))
        self.logit_scale = nn.Parameter(torch.full((), math.log(1 / 0.07)))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=width**-0.5)

    def encode(self, token_ids: torch.Tensor, layer: str = "penultimate") -> torch.Tensor:
        """token_ids (B, L <= context_length) -> (B, L, width): the output of the penultimate residual
        block (or the last, layer="last") through ln_final, as VideoCrafter2 (and SD 2.x) condition on."""
        if layer not in ("penultimate", "last"):
            raise ValueError(f"layer must be 'penultimate' or 'last'; got {layer!r}")
        length = token_ids.shape[1]
        if length > self.positional_embedding.shape[0]:
            raise ValueError(f"{length} tokens; the text tower takes at most {self.positional_embedding.shape[0]}")
        x = self.token_embedding(token_ids) + self.positional_embedding[:length]
        blocks = self.transformer.resblocks
        for block in blocks[: len(blocks) - 1] if layer == "penultimate" else blocks:
            x = block(x)
        return self.ln_final(x)


# ---------------------------------------------------------------------------------- tokenisation

START_TOKEN, END_TOKEN, PAD_TOKEN = 49406, 49407, 0


@functools.lru_cache(maxsize=1)
def _pieces_pattern():
    """CLIP's pre-tokenizer: contractions, runs of letters, single digits, runs of other non-space
    characters; open_clip spells its two special tokens <start_of_text> / <end_of_text>."""
    import regex  # a transformers dependency; the standard `re` has no \p{L}

    return regex.compile(
        r"<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
        regex.IGNORECASE,
    )


def _fix_text(text: str) -> str:
    """ftfy.fix_text, as open_clip applies it. Without ftfy (it is a WebUI dependency, not one of the
    standalone install): NFC and straight quotes, which covers ordinary text; mojibake, ligatures and
    full-width forms are then left as they are and can tokenise differently."""
    try:
        import ftfy
    except ImportError:
        text = unicodedata.normalize("NFC", text)
        text = "".join("'" if "\u2018" <= ch <= "\u201b" or ch == "\u02bc" else ch for ch in text)
        return "".join('"' if "\u201c" <= ch <= "\u201f" else ch for ch in text)
    return ftfy.fix_text(text)


def clean_prompt(text: str) -> str:
    """The text as open_clip's tokenizer sees it: repaired, HTML entities decoded (twice), runs of
    whitespace collapsed to one space, stripped, lower-cased."""
    import regex

    text = html.unescape(html.unescape(_fix_text(text))).strip()
    return regex.sub(r"\s+", " ", text).strip().lower()


@functools.lru_cache(maxsize=1)
def _default_tokenizer():
    from lib_elevator.tokenizer import clip_tokenizer

    return clip_tokenizer(pad_token="!")


def vc2_tokenize(prompts: str | list[str], tokenizer=None, context_length: int = 77) -> torch.Tensor:
    """Token ids as `open_clip.tokenize` makes them for VideoCrafter2: [49406] + BPE + [49407], padded
    with 0 to `context_length`; a longer prompt is cut and ends with 49407. Returns (B, context_length).

    `tokenizer`: a transformers CLIPTokenizer holding CLIP's BPE vocabulary (default:
    `lib_elevator.tokenizer.clip_tokenizer`, built from open_clip_torch's file). Only its vocabulary and
    BPE merges are used: its own text cleaning differs from open_clip's (it does not decode HTML
    entities, and without ftfy it splits "..." into three tokens and strips accents).
    """
    tokenizer = tokenizer if tokenizer is not None else _default_tokenizer()
    if isinstance(prompts, str):
        prompts = [prompts]
    rows = torch.full((len(prompts), context_length), PAD_TOKEN, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids = [START_TOKEN]
        for piece in _pieces_pattern().findall(clean_prompt(prompt)):
            if piece in ("<start_of_text>", "<end_of_text>"):
                ids.append(START_TOKEN if piece == "<start_of_text>" else END_TOKEN)
                continue
            symbols = "".join(tokenizer.byte_encoder[byte] for byte in piece.encode("utf-8"))
            ids.extend(tokenizer.encoder[token] for token in tokenizer.bpe(symbols).split(" "))
        ids.append(END_TOKEN)
        if len(ids) > context_length:
            ids = ids[: context_length - 1] + [END_TOKEN]
        rows[row, : len(ids)] = torch.tensor(ids)
    return rows


# ---------------------------------------------------------------------------------- VAE


def vc2_vae_config(first_stage_params: dict | None = None, scale_factor: float = VC2_SCALE_FACTOR) -> dict:
    """diffusers AutoencoderKL kwargs for an ldm `first_stage_config.params` (embed_dim + ddconfig)."""
    params = first_stage_params if first_stage_params is not None else VC2_VAE_PARAMS
    dd = params["ddconfig"]
    if dd.get("attn_resolutions"):
        raise ValueError("VAE attn_resolutions must be empty (only the mid blocks have attention)")
    if not dd.get("double_z", True) or params.get("embed_dim", dd["z_channels"]) != dd["z_channels"]:
        raise ValueError("VAE with double_z false or embed_dim != z_channels is not supported")
    channels = [int(dd["ch"]) * int(m) for m in dd["ch_mult"]]
    return {
        "in_channels": int(dd["in_channels"]),
        "out_channels": int(dd["out_ch"]),
        "down_block_types": ["DownEncoderBlock2D"] * len(channels),
        "up_block_types": ["UpDecoderBlock2D"] * len(channels),
        "block_out_channels": channels,
        "layers_per_block": int(dd["num_res_blocks"]),
        "latent_channels": int(dd["z_channels"]),
        "norm_num_groups": 32,
        "sample_size": int(dd.get("resolution", 512)),
        "scaling_factor": float(scale_factor),
    }


def vc2_vae(weights: dict, first_stage_params: dict | None = None, scale_factor: float = VC2_SCALE_FACTOR):
    """diffusers AutoencoderKL from the checkpoint's ldm-named VAE tensors (with or without the
    `first_stage_model.` prefix), converted by diffusers' single-file helper and loaded strictly. The
    maths is the ldm VAE's: decode = post_quant_conv then the decoder, on latents / scale_factor."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    config = vc2_vae_config(first_stage_params, scale_factor)
    vae_weights = {k[len(VAE_PREFIX) :] if k.startswith(VAE_PREFIX) else k: v for k, v in weights.items()}
    converted = convert_ldm_vae_checkpoint(vae_weights, config)
    with torch.device("meta"):
        vae = AutoencoderKL(**config)
    expected = set(vae.state_dict())
    missing, unexpected = sorted(expected - set(converted)), sorted(set(converted) - expected)
    if missing or unexpected or len(converted) != len(vae_weights):
        raise ValueError(
            f"VAE: {len(vae_weights)} tensors given, {len(converted)} converted, {len(missing)} missing "
            f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]} (not an ldm kl-f8 VAE of this config?)"
        )
    vae.load_state_dict(converted, strict=True, assign=True)
    return vae.eval()


# ---------------------------------------------------------------------------------- schedule


def vc2_alphas_cumprod(timesteps: int = 1000, linear_start: float = 0.00085, linear_end: float = 0.012) -> torch.Tensor:
    """ᾱ_t, t = 0..timesteps-1 (float64): ldm's "linear" schedule, linear in sqrt(beta) (SD's)."""
    betas = torch.linspace(linear_start**0.5, linear_end**0.5, timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, dim=0)


def scale_arr(
    timesteps: int = 1000, scale_b: float = 0.7, mid_step: int = 400, scale_a: float = 1.0, fix_scale_bug: bool = False
) -> torch.Tensor:
    """The signal scale s_t (float64): linear from scale_a at t = 0 to scale_b at t = mid_step - 1, then
    scale_b. The trained model's table is 1,400 long (timesteps entries after the ramp, the upstream
    "scale bug"); only the first `timesteps` entries are ever read."""
    tail = timesteps - mid_step if fix_scale_bug else timesteps
    return torch.cat(
        [
            torch.linspace(scale_a, scale_b, mid_step, dtype=torch.float64),
            torch.full((tail,), scale_b, dtype=torch.float64),
        ]
    )


def vc2_schedule_buffers(
    timesteps: int = 1000,
    linear_start: float = 0.00085,
    linear_end: float = 0.012,
    scale_b: float = 0.7,
    mid_step: int = 400,
) -> dict[str, torch.Tensor]:
    """The 13 float32 schedule buffers a VideoCrafter2 checkpoint stores (computed in float64 first),
    keyed as in the checkpoint. Inference needs none of them; they are for writing and checking files."""
    betas = torch.linspace(linear_start**0.5, linear_end**0.5, timesteps, dtype=torch.float64) ** 2
    alphas = 1 - betas
    cumprod = torch.cumprod(alphas, dim=0)
    cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), cumprod[:-1]])
    posterior_variance = betas * (1 - cumprod_prev) / (1 - cumprod)
    buffers = {
        "betas": betas,
        "alphas_cumprod": cumprod,
        "alphas_cumprod_prev": cumprod_prev,
        "sqrt_alphas_cumprod": cumprod.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1 - cumprod).sqrt(),
        "log_one_minus_alphas_cumprod": (1 - cumprod).log(),
        "sqrt_recip_alphas_cumprod": (1 / cumprod).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1 / cumprod - 1).sqrt(),
        "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": posterior_variance.clamp(min=1e-20).log(),
        "posterior_mean_coef1": betas * cumprod_prev.sqrt() / (1 - cumprod),
        "posterior_mean_coef2": (1 - cumprod_prev) * alphas.sqrt() / (1 - cumprod),
        "scale_arr": scale_arr(timesteps, scale_b, mid_step),
    }
    return {name: buffers[name].float() for name in SCHEDULE_BUFFERS}


def _schedule_tables(alphas_cumprod, scales):
    alphas_cumprod = vc2_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod
    scales = scale_arr() if scales is None else scales
    return alphas_cumprod, scales


def vc2_add_noise(
    x0: torch.Tensor, eps: torch.Tensor, t: int, alphas_cumprod: torch.Tensor | None = None, scales=None
) -> torch.Tensor:
    """x_t = sqrt(ᾱ_t) * s_t * x0 + sqrt(1 - ᾱ_t) * eps, for any shape (x0 and eps alike)."""
    table, scales = _schedule_tables(alphas_cumprod, scales)
    a, s = float(table[t]), float(scales[t])
    return math.sqrt(a) * s * x0 + math.sqrt(1 - a) * eps


def vc2_predict_x0(
    x_t: torch.Tensor, eps: torch.Tensor, t: int, alphas_cumprod: torch.Tensor | None = None, scales=None
) -> torch.Tensor:
    """The clean latent from a noise prediction: (x_t - sqrt(1 - ᾱ_t) * eps) / sqrt(ᾱ_t) / s_t."""
    table, scales = _schedule_tables(alphas_cumprod, scales)
    a, s = float(table[t]), float(scales[t])
    return (x_t - math.sqrt(1 - a) * eps) / math.sqrt(a) / s


def vc2_ddim_step(
    x_t: torch.Tensor,
    eps: torch.Tensor,
    t: int,
    t_prev: int | None,
    alphas_cumprod: torch.Tensor | None = None,
    scales=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One deterministic DDIM step (eta = 0) with VideoCrafter2's signal rescale, from timestep t to
    t_prev. Returns (x_prev, pred_x0), pred_x0 already divided by s_t as the official sampler returns it.

    x_prev = sqrt(ᾱ_prev) * s_prev * pred_x0 + sqrt(1 - ᾱ_prev) * eps. The last step of a sampling run
    (t_prev None, or 0) uses ᾱ_prev = ᾱ_0 (not 1) and s_prev = s_0 = 1, as the official sampler does.
    """
    table, scales = _schedule_tables(alphas_cumprod, scales)
    pred_x0 = vc2_predict_x0(x_t, eps, t, table, scales)
    prev = 0 if t_prev is None else t_prev
    a_prev, s_prev = float(table[prev]), float(scales[prev])
    return math.sqrt(a_prev) * s_prev * pred_x0 + math.sqrt(1 - a_prev) * eps, pred_x0
