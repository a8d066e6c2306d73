"""A tiny random-weight VideoCrafter2 in the layout users download: `model.ckpt` (a torch pickle of
`{"state_dict": ...}` with the real 2,039 keys) plus the official inference yaml beside it, here with
tiny sizes, and the open_clip model config of its tiny text tower.

The sizes keep the real key set: model channels 32 x (1, 2, 4, 4) change width at the same blocks as
320 x (1, 2, 4, 4) (a skip convolution wherever the real one has one), the VAE has 32 x (1, 2, 4, 4)
channels, and the text tower keeps its 24 blocks at width 64 (4 heads). UNet heads are 16 channels
wide, so every attention has 2 to 8 heads and init_attn is 8 x 16 = 128 wide. The official code builds and loads these files strictly.
"""

from __future__ import annotations

import json
import math
import os

import torch

from lib_elevator.t2v.videocrafter_net import (
    TEXT_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    VC2_UNET_CONFIG,
    OpenCLIPTextTower,
    VideoCrafterUNet,
    text_config_from_open_clip,
    vc2_schedule_buffers,
)
from lib_elevator.tiny.t2v import randomize_zero_weights

CHECKPOINT_NAME = "model.ckpt"
YAML_NAME = "inference_t2v_512_v2.0.yaml"
TINY_TEXT_ARCH = "tiny-ViT-H-14"

# An open_clip model config (the JSON format of open_clip's model_configs). The official embedder
# builds the whole CLIP model before dropping the visual tower, so a (tiny) vision_cfg is needed too.
TINY_OPEN_CLIP_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 24},
}

TINY_UNET_PARAMS = dict(VC2_UNET_CONFIG, model_channels=32, num_head_channels=16, context_dim=64)

TINY_VAE_PARAMS = {
    "embed_dim": 4,
    "monitor": "val/rec_loss",
    "ddconfig": {
        "double_z": True,
        "z_channels": 4,
        "resolution": 64,
        "in_channels": 3,
        "out_ch": 3,
        "ch": 32,
        "ch_mult": [1, 2, 4, 4],
        "num_res_blocks": 2,
        "attn_resolutions": [],
        "dropout": 0.0,
    },
    "lossconfig": {"target": "torch.nn.Identity"},
}


def tiny_inference_yaml(arch: str = TINY_TEXT_ARCH) -> dict:
    """The official configs/inference_t2v_512_v2.0.yaml, structure and values, with the tiny sizes."""
    return {
        "model": {
            "target": "lvdm.models.ddpm3d.LatentDiffusion",
            "params": {
                "linear_start": 0.00085,
                "linear_end": 0.012,
                "num_timesteps_cond": 1,
                "timesteps": 1000,
                "first_stage_key": "video",
                "cond_stage_key": "caption",
                "cond_stage_trainable": False,
                "conditioning_key": "crossattn",
                "image_size": [40, 64],
                "channels": 4,
                "scale_by_std": False,
                "scale_factor": 0.18215,
                "use_ema": False,
                "uncond_type": "empty_seq",
                "use_scale": True,
                "scale_b": 0.7,
                "unet_config": {"target": "lvdm.modules.networks.openaimodel3d.UNetModel", "params": TINY_UNET_PARAMS},
                "first_stage_config": {"target": "lvdm.models.autoencoder.AutoencoderKL", "params": TINY_VAE_PARAMS},
                "cond_stage_config": {
                    "target": "lvdm.modules.encoders.condition.FrozenOpenCLIPEmbedder",
                    "params": {"freeze": True, "layer": "penultimate", "arch": arch},
                },
            },
        }
    }


def ldm_vae_shapes(params: dict) -> dict[str, tuple[int, ...]]:
    """Names and shapes of an ldm AutoencoderKL state dict (encoder, decoder, quant convs), from its
    first_stage_config.params. 248 tensors for a 4-level, 2-resnet VAE like SD's."""
    dd = params["ddconfig"]
    ch, mults, blocks = dd["ch"], list(dd["ch_mult"]), dd["num_res_blocks"]
    z, embed = dd["z_channels"], params["embed_dim"]
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name, out_c, in_c, k):
        shapes[f"{name}.weight"] = (out_c, in_c, k, k)
        shapes[f"{name}.bias"] = (out_c,)

    def norm(name, c):
        shapes[f"{name}.weight"] = (c,)
        shapes[f"{name}.bias"] = (c,)

    def resnet(name, in_c, out_c):
        norm(f"{name}.norm1", in_c)
        conv(f"{name}.conv1", out_c, in_c, 3)
        norm(f"{name}.norm2", out_c)
        conv(f"{name}.conv2", out_c, out_c, 3)
        if in_c != out_c:
            conv(f"{name}.nin_shortcut", out_c, in_c, 1)

    def middle(name, c):
        resnet(f"{name}.mid.block_1", c, c)
        norm(f"{name}.mid.attn_1.norm", c)
        for part in ("q", "k", "v", "proj_out"):
            conv(f"{name}.mid.attn_1.{part}", c, c, 1)
        resnet(f"{name}.mid.block_2", c, c)

    conv("encoder.conv_in", ch, dd["in_channels"], 3)
    width = ch
    for level, mult in enumerate(mults):
        for block in range(blocks):
            resnet(f"encoder.down.{level}.block.{block}", width, ch * mult)
            width = ch * mult
        if level != len(mults) - 1:
            conv(f"encoder.down.{level}.downsample.conv", width, width, 3)
    middle("encoder", width)
    norm("encoder.norm_out", width)
    conv("encoder.conv_out", 2 * z if dd["double_z"] else z, width, 3)

    width = ch * mults[-1]
    conv("decoder.conv_in", width, z, 3)
    middle("decoder", width)
    for level in reversed(range(len(mults))):
        for block in range(blocks + 1):
            resnet(f"decoder.up.{level}.block.{block}", width, ch * mults[level])
            width = ch * mults[level]
        if level != 0:
            conv(f"decoder.up.{level}.upsample.conv", width, width, 3)
    norm("decoder.norm_out", width)
    conv("decoder.conv_out", dd["out_ch"], width, 3)

    conv("quant_conv", 2 * embed, 2 * z, 1)
    conv("post_quant_conv", z, embed, 1)
    return shapes


def random_ldm_vae(params: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random VAE tensors scaled like an initialised network (weights ~ 1/sqrt(fan-in)); norm scales
    and biases vary too, so a swapped or missing tensor shows in the output."""
    state = {}
    for name, shape in ldm_vae_shapes(params).items():
        values = torch.randn(shape, generator=generator)
        if len(shape) > 1:
            values = values / math.sqrt(math.prod(shape[1:]))
        elif name.endswith(".weight"):  # a norm's scale
            values = 1 + 0.1 * values
        else:
            values = 0.05 * values
        state[name] = values
    return state


def tiny_videocrafter_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """The 2,039 tensors of a tiny VideoCrafter2 checkpoint, keyed as in the real `model.ckpt`."""
    generator = torch.Generator("cpu").manual_seed(seed)
    torch.manual_seed(seed)  # module constructors draw from the global generator
    unet = VideoCrafterUNet(TINY_UNET_PARAMS)
    text = OpenCLIPTextTower(text_config_from_open_clip(TINY_OPEN_CLIP_CONFIG))
    # Our modules initialise every layer randomly; this only matters if that ever changes (the
    # official code zero-initialises proj_out and the last temporal conv, which would hide them).
    randomize_zero_weights(unet, generator)
    state = {UNET_PREFIX + k: v for k, v in unet.state_dict().items()}
    state.update({VAE_PREFIX + k: v for k, v in random_ldm_vae(TINY_VAE_PARAMS, generator).items()})
    state.update({TEXT_PREFIX + k: v for k, v in text.state_dict().items()})
    state.update(vc2_schedule_buffers())
    return {k: v.detach().clone().contiguous() for k, v in state.items()}


def save_videocrafter_checkpoint(state: dict[str, torch.Tensor], path: str, container: str = "state_dict") -> str:
    """Pickle `state` in one of the three containers the official loader accepts:
    "state_dict" ({"state_dict": state}, the published file), "module" (a DeepSpeed export:
    {"module": {"_forward_module." + key: tensor}}) or "bare" (the state dict itself)."""
    if container == "state_dict":
        payload = {"state_dict": state}
    elif container == "module":
        payload = {"module": {"_forward_module." + k: v for k, v in state.items()}}
    elif container == "bare":
        payload = dict(state)
    else:
        raise ValueError(f"container must be state_dict, module or bare; got {container!r}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save(payload, path)
    return path


def write_tiny_videocrafter(folder: str, seed: int = 0, container: str = "state_dict") -> str:
    """Write `folder/model.ckpt`, `folder/inference_t2v_512_v2.0.yaml` and `folder/tiny-ViT-H-14.json`
    (the tiny text tower's open_clip config). Deterministic per seed. Returns the checkpoint path."""
    import yaml

    os.makedirs(folder, exist_ok=True)
    path = save_videocrafter_checkpoint(tiny_videocrafter_state(seed), os.path.join(folder, CHECKPOINT_NAME), container)
    with open(os.path.join(folder, YAML_NAME), "w", encoding="utf-8") as f:
        yaml.safe_dump(tiny_inference_yaml(), f, sort_keys=False)
    with open(os.path.join(folder, TINY_TEXT_ARCH + ".json"), "w", encoding="utf-8") as f:
        json.dump(TINY_OPEN_CLIP_CONFIG, f, indent=2)
    return path
