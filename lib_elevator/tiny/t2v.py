"""Tiny random-weight text-to-video models, written in the on-disk layouts users have.

- `build_tiny_zeroscope_folder`: a diffusers text-to-video folder (ZeroScope v2 / ModelScope 1.7b
  layout: model_index.json, unet/ = UNet3DConditionModel, text_encoder/, tokenizer/, vae/,
  scheduler/).
- `write_tiny_motion_module`: an AnimateDiff motion module file in the *original* AnimateDiff key
  naming (`down_blocks.0.motion_modules.0.temporal_transformer....`), as mm_sd_v15_v2.ckpt and
  friends are shipped. It fits `TINY_SD1_UNET_CONFIG` (or any SD1-style UNet config given).
- `build_tiny_animatelcm_folder`: a diffusers MotionAdapter folder plus an LCM LoRA file, as the
  AnimateLCM release ships (config.json, diffusion_pytorch_model.safetensors,
  AnimateLCM_sd15_t2v_lora.safetensors).

Every builder is deterministic for its seed, and layers that the real architectures initialise to
zero (output projections) get random values so that outputs depend on inputs.
"""

from __future__ import annotations

import math
import os

import torch

from lib_elevator.t2v.animatediff import ANIMATELCM_LORA_NAME, MOTION_KEY_RENAMES
from lib_elevator.tiny import write_json

# An SD1-style UNet2DConditionModel small enough for CPU tests. Two motion modules per down block,
# like SD1.5 (layers_per_block must match the motion module's), cross-attention width 32.
TINY_SD1_UNET_CONFIG = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [32, 64],
    "layers_per_block": 2,
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}

TINY_TEXT_CONFIG = {
    "vocab_size": 49408,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 32,
}

# The SD VAE family with its real 8x downscale (four encoder blocks), in few channels.
TINY_VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [8, 16, 16, 16],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": 64,
    "scaling_factor": 0.18215,
}

TINY_UNET3D_CONFIG = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock3D", "DownBlock3D"],
    "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D"],
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "cross_attention_dim": 32,
    "attention_head_dim": 4,
    "norm_num_groups": 32,
}

# ZeroScope v2 / ModelScope ship a DDIM scheduler with SD's scaled_linear table.
ZEROSCOPE_SCHEDULER_CONFIG = {
    "_class_name": "DDIMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}

MOTION_VERSIONS = {
    # version: (positional-encoding length, has a mid-block motion module). v1 (mm_sd_v14/v15) has
    # 24 positions and no mid block, v2 (mm_sd_v15_v2) 32 and a mid block, v3 (v3_sd15_mm) 32 and
    # no mid block - the same distinctions diffusers' single-file loader draws.
    "v1": (24, False),
    "v2": (32, True),
    "v3": (32, False),
}


def randomize_zero_weights(module: torch.nn.Module, generator: torch.Generator, std: float = 0.02) -> int:
    """Give every all-zero weight matrix/kernel random values (real models zero-init some output
    layers; a zero layer would make a test blind to the inputs). Returns how many were changed."""
    changed = 0
    with torch.no_grad():
        for param in module.parameters():
            if param.ndim >= 2 and not param.any():
                param.copy_(torch.randn(param.shape, generator=generator) * std)
                changed += 1
    return changed


def _seeded(seed: int) -> torch.Generator:
    torch.manual_seed(seed)  # module constructors draw from the global generator
    return torch.Generator("cpu").manual_seed(seed)


# --------------------------------------------------------------------------------- components


def tiny_text_encoder(seed: int = 0, hidden_size: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel

    _seeded(seed)
    config = dict(TINY_TEXT_CONFIG, hidden_size=hidden_size, projection_dim=hidden_size)
    return CLIPTextModel(CLIPTextConfig(**config)).eval()


def tiny_vae(seed: int = 0):
    from diffusers import AutoencoderKL

    generator = _seeded(seed)
    vae = AutoencoderKL(**TINY_VAE_CONFIG).eval()
    randomize_zero_weights(vae, generator)
    return vae


def tiny_sd1_unet(seed: int = 0, config: dict | None = None):
    """The SD1-style UNet the tiny motion modules plug into."""
    from diffusers import UNet2DConditionModel

    generator = _seeded(seed)
    unet = UNet2DConditionModel(**(config or TINY_SD1_UNET_CONFIG)).eval()
    randomize_zero_weights(unet, generator)
    return unet


def tiny_motion_adapter(
    version: str = "v2",
    seed: int = 0,
    block_out_channels=None,
    layers_per_block: int | None = None,
    num_attention_heads: int = 8,
):
    """A random MotionAdapter shaped like AnimateDiff `version` for an SD1-style UNet."""
    from diffusers import MotionAdapter

    if version not in MOTION_VERSIONS:
        raise ValueError(f"motion module version must be one of {', '.join(MOTION_VERSIONS)}; got {version!r}")
    positions, mid_block = MOTION_VERSIONS[version]
    generator = _seeded(seed)
    adapter = MotionAdapter(
        block_out_channels=tuple(block_out_channels or TINY_SD1_UNET_CONFIG["block_out_channels"]),
        motion_layers_per_block=layers_per_block or TINY_SD1_UNET_CONFIG["layers_per_block"],
        motion_num_attention_heads=num_attention_heads,
        motion_max_seq_length=positions,
        use_motion_mid_block=mid_block,
    ).eval()
    randomize_zero_weights(adapter, generator)
    # AnimateDiff zero-initialises each motion module's output projection, so a fresh module is
    # the identity; random values make the temporal layers visible in the output.
    with torch.no_grad():
        for name, param in adapter.named_parameters():
            if name.endswith("proj_out.weight"):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    return adapter


# --------------------------------------------------------------------------------- ZeroScope


def build_tiny_zeroscope_folder(folder: str, seed: int = 0, with_vae: bool = True) -> str:
    """A diffusers text-to-video folder with tiny random weights (safetensors everywhere)."""
    from diffusers import UNet3DConditionModel

    from lib_elevator.tokenizer import clip_tokenizer

    os.makedirs(folder, exist_ok=True)
    generator = _seeded(seed)
    unet = UNet3DConditionModel(**TINY_UNET3D_CONFIG).eval()
    randomize_zero_weights(unet, generator)
    unet.save_pretrained(os.path.join(folder, "unet"), safe_serialization=True)

    text_encoder = tiny_text_encoder(seed + 1, TINY_UNET3D_CONFIG["cross_attention_dim"])
    text_encoder.save_pretrained(os.path.join(folder, "text_encoder"), safe_serialization=True)
    # ZeroScope/ModelScope use OpenCLIP's text model, which pads with "!" (as SD2 does).
    clip_tokenizer(pad_token="!").save_pretrained(os.path.join(folder, "tokenizer"))

    components = {
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet3DConditionModel"],
    }
    if with_vae:
        tiny_vae(seed + 2).save_pretrained(os.path.join(folder, "vae"), safe_serialization=True)
        components["vae"] = ["diffusers", "AutoencoderKL"]

    write_json(os.path.join(folder, "scheduler", "scheduler_config.json"), ZEROSCOPE_SCHEDULER_CONFIG)
    write_json(os.path.join(folder, "model_index.json"), {"_class_name": "TextToVideoSDPipeline", **components})
    return folder


# --------------------------------------------------------------------------------- AnimateDiff


def original_motion_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a diffusers MotionAdapter state dict to the original AnimateDiff naming.

    The original wraps each motion module's layers in `temporal_transformer`, calls the two
    temporal self-attentions `attention_blocks.0/1` with norms `norms.0/1` and `ff_norm`, and
    stores the fixed sinusoidal position table in each attention block (`pos_encoder.pe`), where
    diffusers keeps one `pos_embed.pe` per transformer block.
    """
    renames = [(new, old) for old, new in MOTION_KEY_RENAMES if old != ".temporal_transformer."]
    out = {}
    for key, value in state.items():
        head, sep, tail = key.partition(".motion_modules.")
        index, _, rest = tail.partition(".")
        key = f"{head}{sep}{index}.temporal_transformer.{rest}"
        if key.endswith(".pos_embed.pe"):
            stem = key[: -len(".pos_embed.pe")]
            out[f"{stem}.attention_blocks.0.pos_encoder.pe"] = value.clone()
            out[f"{stem}.attention_blocks.1.pos_encoder.pe"] = value.clone()
            continue
        for old, new in renames:
            key = key.replace(old, new)
        out[key] = value.contiguous()
    return out


def write_tiny_motion_module(
    path: str,
    version: str = "v2",
    seed: int = 0,
    block_out_channels=None,
    layers_per_block: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> str:
    """An AnimateDiff motion module file in the original key naming. `.safetensors` or, for a
    path ending in `.ckpt`, a pickled torch checkpoint like the official releases."""
    adapter = tiny_motion_adapter(version, seed, block_out_channels, layers_per_block)
    state = {k: v.to(dtype) for k, v in original_motion_keys(adapter.state_dict()).items()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.endswith(".ckpt"):
        torch.save(state, path)
    else:
        from safetensors.torch import save_file

        save_file(state, path)
    return path


# --------------------------------------------------------------------------------- AnimateLCM


def lora_target_names(unet: torch.nn.Module) -> list[str]:
    """Module names an SD1.5 LCM LoRA adapts: the linear and convolution layers of the UNet's
    down/mid/up blocks (attention projections, feed-forwards, resnet convolutions)."""
    names = []
    for name, module in unet.named_modules():
        if not name.startswith(("down_blocks.", "mid_block.", "up_blocks.")):
            continue
        if ".motion_modules." in name:
            continue  # the LCM LoRA adapts the image layers only
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and "samplers" not in name:
            names.append(name)
    return names


def tiny_lcm_lora_state(
    unet: torch.nn.Module, seed: int = 0, rank: int = 4, alpha: float = 0.5, lora_format: str = "kohya"
) -> dict[str, torch.Tensor]:
    """A random LoRA over `lora_target_names(unet)`.

    "kohya" is the format of AnimateLCM_sd15_t2v_lora.safetensors (and of the SD1.5 LCM-LoRA):
    `lora_unet_<module path with _>.lora_down.weight / .lora_up.weight / .alpha`, diffusers module
    names. Its alpha / rank is 1/8 (AnimateLCM's own merge code hard-codes that scale); the tiny
    one keeps that ratio. "peft" is the diffusers/PEFT layout
    (`unet.<module path>.lora_A.weight / .lora_B.weight`, scale 1).
    """
    if lora_format not in ("kohya", "peft"):
        raise ValueError(f"LoRA format must be kohya or peft; got {lora_format!r}")
    generator = torch.Generator("cpu").manual_seed(seed)
    modules = dict(unet.named_modules())
    state = {}
    for name in lora_target_names(unet):
        module = modules[name]
        if isinstance(module, torch.nn.Linear):
            down_shape = (rank, module.in_features)
            up_shape = (module.out_features, rank)
        else:
            down_shape = (rank, module.in_channels, *module.kernel_size)
            up_shape = (module.out_channels, rank, 1, 1)
        down = torch.randn(down_shape, generator=generator) / math.sqrt(math.prod(down_shape[1:]))
        up = torch.randn(up_shape, generator=generator) * 0.5
        if lora_format == "kohya":
            stem = "lora_unet_" + name.replace(".", "_")
            state[f"{stem}.lora_down.weight"] = down
            state[f"{stem}.lora_up.weight"] = up
            state[f"{stem}.alpha"] = torch.tensor(float(alpha))
        else:
            state[f"unet.{name}.lora_A.weight"] = down
            state[f"unet.{name}.lora_B.weight"] = up
    return state


def build_tiny_animatelcm_folder(
    folder: str, seed: int = 0, lora_format: str = "kohya", unet_config: dict | None = None
) -> str:
    """An AnimateLCM folder: MotionAdapter (config.json + diffusion_pytorch_model.safetensors) and
    the LCM LoRA file next to it."""
    from diffusers import UNetMotionModel
    from safetensors.torch import save_file

    config = unet_config or TINY_SD1_UNET_CONFIG
    adapter = tiny_motion_adapter("v2", seed, config["block_out_channels"], config["layers_per_block"])
    adapter.save_pretrained(folder, safe_serialization=True)
    # The LoRA's layer names and shapes are those of the motion UNet built on an SD1 base.
    motion_unet = UNetMotionModel.from_unet2d(tiny_sd1_unet(seed, config), adapter)
    save_file(
        tiny_lcm_lora_state(motion_unet, seed + 1, lora_format=lora_format), os.path.join(folder, ANIMATELCM_LORA_NAME)
    )
    return folder
