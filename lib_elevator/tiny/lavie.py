"""A tiny random-weight LaVie base in the container users download.

`write_tiny_lavie(folder)` writes
- `lavie_base.pt`: `torch.save({"ema": state_dict})` with the published file's 830 key names
  (including the 16 `attn_temp.rotary_emb.freqs` entries, holding the true constant), fp32 tensors;
- `config.json`: an SD 1.4-style `unet/config.json` with the tiny channel widths, the same kind of
  file a user may put beside the real weights to describe the architecture.

The tiny widths (64, 96, 128, 128) with 2 heads change channel count at the same blocks as the real
(320, 640, 1280, 1280), so every key of the real file exists (a (64, 64, ...) layout would lose
`down_blocks.1.resnets.0.conv_shortcut`), and every head is at least 32 wide, as the temporal RoPE
needs. Cross-attention is 32 wide, like the project's tiny CLIP text encoders.
"""

from __future__ import annotations

import json
import os

import torch

from lib_elevator.t2v.lavie_net import LAVIE_BASE_UNET_CONFIG, LaVieUNet
from lib_elevator.tiny.t2i import randomise_constant_weights

LAVIE_WEIGHTS_NAME = "lavie_base.pt"

TINY_LAVIE_UNET_CONFIG: dict = {
    **LAVIE_BASE_UNET_CONFIG,
    "block_out_channels": [64, 96, 128, 128],
    "attention_head_dim": 2,
    "cross_attention_dim": 32,
    "sample_size": 8,
}


def tiny_lavie_unet(seed: int = 0, config: dict | None = None) -> LaVieUNet:
    """The tiny LaVie UNet in memory (float32, CPU, eval), the same for the same seed. Norms, biases
    and anything constant are made random, so every tensor influences the output."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # module constructors draw from the global generator
        unet = LaVieUNet(config or TINY_LAVIE_UNET_CONFIG)
    randomise_constant_weights(unet, torch.Generator("cpu").manual_seed(seed + 1))
    return unet.eval()


def write_tiny_lavie(folder: str, seed: int = 0, cross_attention_dim: int | None = None) -> str:
    """Write `folder/lavie_base.pt` ({"ema": state dict}, 830 keys) and `folder/config.json`.
    `cross_attention_dim`: the text width of the SD1 base it will run with (default 32). Returns the
    path of the weights file."""
    os.makedirs(folder, exist_ok=True)
    config = dict(TINY_LAVIE_UNET_CONFIG)
    if cross_attention_dim:
        config["cross_attention_dim"] = cross_attention_dim
    unet = tiny_lavie_unet(seed, config)
    path = os.path.join(folder, LAVIE_WEIGHTS_NAME)
    torch.save({"ema": unet.file_state_dict()}, path)
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    return path
