"""AnimateDiff and AnimateLCM as a T2V backend: motion modules plugged into the user's SD1.5 UNet.

The motion UNet is diffusers' `UNetMotionModel.from_unet2d(base_unet, adapter)`, the way the
AnimateLCM authors build it: the base model's spatial layers plus the temporal motion modules.
Text encoder, tokenizer and VAE are the base model's own.

Motion modules come as
- a single file in the original AnimateDiff naming (mm_sd_v14/v15.ckpt, mm_sd_v15_v2.ckpt,
  v3_sd15_mm.ckpt, AnimateLCM_sd15_t2v.ckpt, or their .safetensors conversions), converted here
  without a model hub: the adapter's config is read off the weights; or
- a diffusers MotionAdapter folder (config.json + diffusion_pytorch_model.safetensors), which is
  how AnimateLCM ships; its folder also holds the LCM LoRA (AnimateLCM_sd15_t2v_lora.safetensors).

AnimateLCM = motion module + LCM LoRA merged into the motion UNet at weight 0.8 (the authors'
adapter weight), sampled with LCM steps. Both AnimateDiff and AnimateLCM train with the *linear*
beta schedule, unlike SD's scaled_linear.
"""

from __future__ import annotations

import logging
import os
import re

import torch

from lib_elevator.errors import ModelError, SettingsError
from lib_elevator.schedule import alphas_cumprod
from lib_elevator.t2v.base import BaseTextEncoder, T2VBackend
from lib_elevator.weights import folder_weights_kwargs, read_json, read_state_dict, tensor_names, unwrap_state_dict

logger = logging.getLogger(__name__)

ANIMATELCM_LORA_NAME = "AnimateLCM_sd15_t2v_lora.safetensors"
LCM_LORA_WEIGHT = 0.8
# diffusers' MotionAdapter defaults, which every released SD1.5 motion module uses; the number of
# heads and norm groups cannot be read off the weights.
MOTION_HEADS = 8
MOTION_NORM_GROUPS = 32


class AnimateDiffBackend(BaseTextEncoder, T2VBackend):
    kind = "animatediff"
    sampler = "ddim"
    prediction_type = "epsilon"

    def __init__(self, motion_unet, base, *, lcm: bool = False, name: str = "", motion_version: str = ""):
        """`base`: the SD1.5 T2IModel the motion module was plugged into. Only its text encoder,
        tokenizer and VAE are kept (the motion UNet holds its own copy of the spatial layers), so a
        caller that drops the base frees its UNet."""
        self.unet = motion_unet.eval()
        self.text_encoder = base.text_encoders[0]
        self.tokenizer = base.tokenizers[0]
        self.kind = "animatelcm" if lcm else "animatediff"
        self.sampler = "lcm" if lcm else "ddim"
        self.name = name
        self.motion_version = motion_version
        self.max_frames = int(motion_unet.config.motion_max_seq_length)
        self.alphas_cumprod = alphas_cumprod("linear", 0.00085, 0.012, 1000)
        self.latent_space = base.latent_space
        self.vae = base.vae  # only used to project latents; SD1.5 shares the T2I model's space
        self.device = motion_unet.device
        self.dtype = motion_unet.dtype

    # ------------------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        motion_module: str,
        base,
        device="cpu",
        dtype: torch.dtype = torch.float32,
        lcm_lora: str | None = None,
        lcm_lora_weight: float = LCM_LORA_WEIGHT,
        allow_pickle: bool = False,
    ) -> AnimateDiffBackend:
        """`motion_module`: a motion-module file or MotionAdapter folder. `base`: the SD1.5 model
        it plugs into, a loaded `T2IModel` of kind "sd1" or a path for `loaders.load_t2i`.
        `lcm_lora`: the AnimateLCM LoRA; found automatically in an AnimateLCM folder (or next to
        an AnimateLCM_*.ckpt/.safetensors file). With a LoRA the backend is AnimateLCM."""
        from diffusers import UNetMotionModel

        motion_module = os.path.abspath(motion_module)
        if base is None:
            raise ModelError(
                f"{motion_module} is an AnimateDiff/AnimateLCM motion module; it needs a SD1.5 base model to plug "
                "into (pass base= or --t2v-base, or select a SD1.x checkpoint)"
            )
        if isinstance(base, (str, os.PathLike)):
            from lib_elevator.loaders import load_t2i

            base = load_t2i(os.fspath(base), device=device, dtype=dtype, allow_pickle=allow_pickle)
        check_base(base, motion_module)

        lcm_lora = lcm_lora or find_lcm_lora(motion_module)
        adapter = load_motion_adapter(motion_module, allow_pickle)
        check_fits(adapter, base.unet, motion_module)
        # Memory: the motion UNet is a full copy of the base UNet (SD1.5: ~860M parameters, 1.7 GB
        # in fp16) plus the motion modules (~450M, 0.9 GB in fp16 for v2), on top of the T2I model
        # itself. It is a copy, not shared weights, so that the LCM LoRA merged below never touches
        # the user's image model. from_unet2d builds it in float32 on the CPU first (~5 GB peak).
        motion_unet = UNetMotionModel.from_unet2d(base.unet, adapter)
        del adapter
        motion_unet.to(device=device, dtype=dtype)
        if lcm_lora is not None:
            merge_lcm_lora(motion_unet, lcm_lora, lcm_lora_weight)
        return cls(
            motion_unet,
            base,
            lcm=lcm_lora is not None,
            name=os.path.basename(motion_module),
            motion_version=motion_version(motion_unet.config),
        )

    # ------------------------------------------------------------------------------ T2VBackend
    def model_output(self, video: torch.Tensor, timestep: int, context: torch.Tensor) -> torch.Tensor:
        frames = video.shape[2]
        if frames > self.max_frames:
            raise SettingsError(
                "frames", f"the motion module {self.name} handles at most {self.max_frames} frames; {frames} were asked for"
            )
        # UNetMotionModel takes (B, C, F, h, w) but, unlike UNet3DConditionModel, wants the text
        # context already repeated per frame, in its (B*F) frame order.
        context = context.to(self.device, self.dtype).repeat_interleave(frames, dim=0)
        return self.unet(video.to(self.device, self.dtype), timestep, encoder_hidden_states=context).sample

    def to(self, device=None, dtype=None) -> AnimateDiffBackend:
        # Only the motion UNet is this backend's own; the text encoder and VAE belong to the base
        # (image) model and are placed with it (the text encoder visits `device` in encode_prompt).
        self.unet.to(device=device, dtype=dtype)
        self.device, self.dtype = self.unet.device, self.unet.dtype
        return self


# ---------------------------------------------------------------------------------- checks


def check_base(base, motion_module: str) -> None:
    kind = getattr(base, "kind", None)
    if kind != "sd1":
        name = getattr(base, "name", "") or type(base).__name__
        raise ModelError(
            f"{motion_module}: AnimateDiff/AnimateLCM motion modules plug into a SD1.5 model; the base model "
            f"{name} is {kind or 'not a loaded T2I model'} (choose a SD1.x checkpoint as the base)"
        )


def check_fits(adapter, unet, motion_module: str) -> None:
    """The adapter's channels and layer counts must match the base UNet's blocks."""
    ours = list(adapter.config.block_out_channels)
    theirs = list(unet.config.block_out_channels)
    if ours != theirs:
        raise ModelError(
            f"{motion_module} is a motion module for a UNet with block channels {ours}; the base UNet has "
            f"{theirs} (SDXL motion modules such as mm_sdxl_v10_beta are not supported)"
        )
    layers = adapter.config.motion_layers_per_block
    if layers != unet.config.layers_per_block:
        raise ModelError(
            f"{motion_module} has {layers} motion modules per down block; the base UNet has "
            f"{unet.config.layers_per_block} layers per block"
        )


def motion_version(config) -> str:
    """AnimateDiff generation, from the shape of the adapter: v1 has a 24-frame position table and
    no mid-block module, v2 a 32-frame table and a mid block, v3 a 32-frame table and none."""
    if config.use_motion_mid_block:
        return "v2"
    return "v1" if config.motion_max_seq_length == 24 else "v3"


# ---------------------------------------------------------------------------------- motion modules


def load_motion_adapter(path: str, allow_pickle: bool = False):
    """A diffusers MotionAdapter from a MotionAdapter folder or a motion-module file."""
    from diffusers import MotionAdapter

    if os.path.isdir(path):
        config_path = os.path.join(path, "config.json")
        if not os.path.isfile(config_path):
            raise ModelError(f"{path} is not a MotionAdapter folder: it has no config.json")
        class_name = read_json(config_path).get("_class_name")
        if class_name != "MotionAdapter":
            raise ModelError(f"{path}: config.json describes a {class_name}, not a MotionAdapter")
        return MotionAdapter.from_pretrained(path, **folder_weights_kwargs(path, allow_pickle))
    return motion_adapter_from_state(unwrap_state_dict(read_state_dict(path, allow_pickle)), path)


def motion_module_problem(names) -> str | None:
    """Why a motion-module file with these tensor names cannot run here, or None when it can."""
    if any(name.removeprefix("module.").startswith("conv_in.") for name in names):
        return "a motion module with its own input convolution (PIA / SparseCtrl); only plain motion modules work"
    return None


def motion_adapter_from_state(state: dict[str, torch.Tensor], path: str = "motion module"):
    from diffusers import MotionAdapter

    if any(".temporal_transformer." in k for k in state):
        state = diffusers_motion_keys(state)
    if not any(".motion_modules." in k for k in state):
        raise ModelError(f"{path} is not an AnimateDiff motion module: it has no motion_modules weights")
    problem = motion_module_problem(state)
    if problem:
        raise ModelError(f"{path}: {problem}")
    config = motion_adapter_config(state, path)
    adapter = MotionAdapter(**config)
    missing, unexpected = adapter.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelError(
            f"{path} does not match the motion-module layout its weights imply ({config}): "
            f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}"
        )
    return adapter.eval()


# Original AnimateDiff name part -> diffusers MotionAdapter name part (the tiny builders write
# original-named files with the reverse of this table).
MOTION_KEY_RENAMES = (
    (".temporal_transformer.", "."),
    (".norms.0.", ".norm1."),
    (".norms.1.", ".norm2."),
    (".ff_norm.", ".norm3."),
    (".attention_blocks.0.", ".attn1."),
    (".attention_blocks.1.", ".attn2."),
)


def diffusers_motion_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original AnimateDiff key naming -> diffusers MotionAdapter naming.

    The original nests each module's layers in `temporal_transformer`, names the two temporal
    self-attentions `attention_blocks.0/1` and their norms `norms.0/1`, `ff_norm`, and stores a
    fixed sinusoidal position table in each attention block. diffusers applies one table per
    transformer block before both attentions; the two stored copies are the same fixed table, so
    the first one is kept.
    """
    out = {}
    for key, value in state.items():
        if key.endswith(".pos_encoder.pe"):
            if ".attention_blocks.0." not in key:
                continue
            key = key.replace(".attention_blocks.0.pos_encoder.pe", ".pos_embed.pe")
        for old, new in MOTION_KEY_RENAMES:
            key = key.replace(old, new)
        out[key] = value
    return out


def motion_adapter_config(state: dict[str, torch.Tensor], path: str = "motion module") -> dict:
    """MotionAdapter arguments read off diffusers-named weights: block channels, modules per block,
    transformer layers per module, mid block, and the position-table length (24 for v1, 32 for
    v2/v3, longer for long-context finetunes)."""
    modules: dict[int, set[int]] = {}
    for key in state:
        match = re.match(r"down_blocks\.(\d+)\.motion_modules\.(\d+)\.", key)
        if match:
            modules.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
    if not modules or sorted(modules) != list(range(len(modules))):
        raise ModelError(f"{path}: cannot find the motion modules of the down blocks (down_blocks.N.motion_modules.M)")
    blocks = range(len(modules))
    channels = [state[f"down_blocks.{i}.motion_modules.0.proj_in.weight"].shape[0] for i in blocks]
    layers = [len(modules[i]) for i in blocks]
    depth = [_count(state, rf"down_blocks\.{i}\.motion_modules\.0\.transformer_blocks\.(\d+)\.") for i in blocks]
    pe = next((v for k, v in state.items() if k.endswith(".pos_embed.pe")), None)
    mid_layers = _count(state, r"mid_block\.motion_modules\.(\d+)\.")
    return {
        "block_out_channels": tuple(channels),
        "motion_layers_per_block": layers[0] if len(set(layers)) == 1 else tuple(layers),
        "motion_transformer_layers_per_block": depth[0] if len(set(depth)) == 1 else tuple(depth),
        "motion_mid_block_layers_per_block": max(mid_layers, 1),
        "motion_transformer_layers_per_mid_block": max(
            _count(state, r"mid_block\.motion_modules\.0\.transformer_blocks\.(\d+)\."), 1
        ),
        "motion_num_attention_heads": MOTION_HEADS,
        "motion_norm_num_groups": MOTION_NORM_GROUPS,
        "motion_max_seq_length": int(pe.shape[1]) if pe is not None else 32,
        "use_motion_mid_block": mid_layers > 0,
    }


def _count(state, pattern: str) -> int:
    found = {int(m.group(1)) for m in (re.match(pattern, k) for k in state) if m}
    return len(found)


# ---------------------------------------------------------------------------------- AnimateLCM


def find_lcm_lora(motion_module: str) -> str | None:
    """The LCM LoRA belonging to an AnimateLCM motion module: inside its folder, or, for a file
    whose name says AnimateLCM, a sibling whose name says LCM and LoRA."""
    if os.path.isdir(motion_module):
        folder, need = motion_module, ("lora",)
    elif "animatelcm" in os.path.basename(motion_module).lower():
        folder, need = os.path.dirname(motion_module), ("lcm", "lora")
    else:
        return None
    exact = os.path.join(folder, ANIMATELCM_LORA_NAME)
    if os.path.isfile(exact):
        return exact
    for entry in sorted(os.listdir(folder)):
        lower = entry.lower()
        if lower.endswith(".safetensors") and all(word in lower for word in need):
            return os.path.join(folder, entry)
    return None


def merge_lcm_lora(motion_unet, lora_path: str, weight: float = LCM_LORA_WEIGHT) -> int:
    """Merge the LCM LoRA into the motion UNet's weights (kohya `lora_unet_*` keys, the format of
    AnimateLCM_sd15_t2v_lora.safetensors, or diffusers/PEFT keys)."""
    from lib_elevator.lora import merge_lora

    names = tensor_names(lora_path) if lora_path.lower().endswith(".safetensors") else None
    if names and any(".lora_down." in n for n in names) and not any(n.endswith(".alpha") for n in names):
        # kohya files scale by alpha / rank, and a file without alphas merges at scale 1. The
        # authors' own merge applies 1/8 (alpha 8 over rank 64, as in the SD1.5 LCM-LoRA).
        logger.warning("LCM LoRA %s has no alpha values; it is merged at alpha = rank (scale 1)", lora_path)
    merged = merge_lora({"unet": motion_unet}, lora_path, weight)
    if not merged:
        raise ModelError(f"the LCM LoRA {lora_path} matched no layer of the motion UNet (is it a SD1.5 LoRA?)")
    return merged
