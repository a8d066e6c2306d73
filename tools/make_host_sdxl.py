"""Write a tiny random-weight SDXL checkpoint that the AUTOMATIC1111 WebUI (v1.10.1) loads offline.

    .venv/bin/python tools/make_host_sdxl.py --webui /tmp/webui/stable-diffusion-webui \
        --open-clip-configs /tmp/webui/venv/lib/python3.11/site-packages/open_clip/model_configs

writes, unless they exist (--force rewrites them):
- `<webui>/models/Stable-diffusion/tiny-sdxl.safetensors`: the sgm key layout (`model.diffusion_model.*`,
  `first_stage_model.*`, `conditioner.embedders.0.transformer.*` CLIP-L in transformers naming,
  `conditioner.embedders.1.model.*` OpenCLIP-G in open_clip naming), at the widths of
  `lib_elevator.tiny.t2i` (UNet 32/64 channels, text towers 32 wide, size embeddings 8 per number);
- `tiny-sdxl.yaml` beside it (the host takes a checkpoint's config from there): the structure of sgm's
  sd_xl_base.yaml; the CLIP-L `version` is the local folder `tiny-sdxl-text-encoder/` (config.json +
  tokenizer, which the host reads offline); the OpenCLIP embedder names `arch: videoelevator-tiny-G`;
- `<open_clip model_configs>/videoelevator-tiny-G.json`: that architecture, registered the way open_clip
  registers its own (it scans its `model_configs/` folder for `*.json` when imported).

Why the architecture file: sgm's FrozenOpenCLIPEmbedder2 builds its tower with
`open_clip.create_model_and_transforms(arch, pretrained=version)`. The host loads checkpoints that hold
their text encoders with `pretrained=None` (sd_disable_initialization), so nothing is downloaded, but the
architecture must be one open_clip knows by name: its names are the files in `model_configs/`, and there is
no way to name a config file by path. No built-in one is tiny (the smallest text tower is 256 wide with
10 layers), so one is added. The host's own code is not touched.

open_clip 2.20's text tower has no MLP-ratio setting (always 4x the width), so the second text encoder is
built here with a 4x MLP instead of `tiny_t2i("sdxl")`'s 2x one; everything else is `tiny_t2i("sdxl")`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

ARCH = "videoelevator-tiny-G"
NAME = "tiny-sdxl"


def open_clip_arch(width: int, heads: int, layers: int, embed_dim: int) -> dict:
    """The open_clip model config of the tiny text tower; the vision tower is built and then deleted by
    sgm (`del model.visual`), so it is as small as open_clip allows."""
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": width, "heads": heads, "layers": layers},
    }


def second_text_encoder(seed: int):
    """OpenCLIP-G's stand-in in transformers form (for the key conversion and the standalone loader):
    the tiny width and depth, GELU, and open_clip's 4x MLP."""
    import torch
    from transformers import CLIPTextModelWithProjection

    from lib_elevator.tiny.t2i import randomise_constant_weights, tiny_text_config

    config = tiny_text_config("open_clip")
    config.intermediate_size = 4 * config.hidden_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 10)
        encoder = CLIPTextModelWithProjection(config)
        randomise_constant_weights(encoder, torch.Generator().manual_seed(seed + 11))
    return encoder.eval().requires_grad_(False)


def host_config(original: dict) -> dict:
    """`tiny_original_config("sdxl")` with what the WebUI's sgm (generative-models 45c443b, as in its
    sd_xl_base.yaml) needs beyond the fields the standalone loader reads: the denoiser's weighting, the
    first stage outside autocast, and the OpenCLIP embedder's arch, `legacy: False` (the host's text
    hijack reads the layer outputs as a dict) and `freeze`."""
    params = original["model"]["params"]
    params["disable_first_stage_autocast"] = True
    denoiser = params["denoiser_config"]["params"]
    weighting = "VWeighting" if denoiser["scaling_config"]["target"].endswith("VScaling") else "EpsWeighting"
    denoiser["weighting_config"] = {"target": f"sgm.modules.diffusionmodules.denoiser_weighting.{weighting}"}
    open_clip_params = params["conditioner_config"]["params"]["emb_models"][1]["params"]
    open_clip_params.update({"arch": ARCH, "freeze": True, "legacy": False})
    return original


def write(webui: str, configs: str, seed: int = 0, force: bool = False) -> list[str]:
    import yaml
    from safetensors.torch import save_file

    from lib_elevator.tiny.t2i import (
        original_weights,
        text_families,
        tiny_original_config,
        tiny_t2i,
        write_text_encoder_folder,
    )

    folder = os.path.join(webui, "models", "Stable-diffusion")
    path = os.path.join(folder, NAME + ".safetensors")
    arch_path = os.path.join(configs, ARCH + ".json")
    written = []
    model = tiny_t2i("sdxl", seed)
    model.text_encoders[1] = second_text_encoder(seed)
    config = model.text_encoders[1].config
    if force or not os.path.exists(arch_path):
        arch = open_clip_arch(config.hidden_size, config.num_attention_heads, config.num_hidden_layers,
                              config.projection_dim)
        with open(arch_path, "w", encoding="utf-8") as f:
            json.dump(arch, f, indent=2)
        written.append(arch_path)
    if force or not os.path.exists(path):
        os.makedirs(folder, exist_ok=True)
        text_folders = []
        for i, (encoder, family) in enumerate(zip(model.text_encoders, text_families("sdxl"))):
            text_folder = os.path.join(folder, NAME + ("-text-encoder" if i == 0 else f"-text-encoder-{i + 1}"))
            text_folders.append(write_text_encoder_folder(text_folder, encoder, family, unused_last_layer=False))
        original = json.loads(json.dumps(tiny_original_config("sdxl", text_folders)))  # no shared dicts: no yaml aliases
        host_config(original)
        with open(os.path.join(folder, NAME + ".yaml"), "w", encoding="utf-8") as f:
            yaml.safe_dump(original, f, sort_keys=False)
        tmp = path + ".tmp"
        save_file(original_weights(model, seed), tmp, metadata={"format": "pt"})
        os.replace(tmp, path)
        written += [path, os.path.join(folder, NAME + ".yaml"), *text_folders]
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--webui", default="/tmp/webui/stable-diffusion-webui", help="the WebUI folder")
    parser.add_argument("--open-clip-configs", required=True,
                        help="the model_configs folder of the open_clip package in the WebUI's venv")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rewrite existing files")
    args = parser.parse_args()
    if not os.path.isdir(args.open_clip_configs):
        parser.error(f"not a folder: {args.open_clip_configs}")
    for path in write(args.webui, args.open_clip_configs, args.seed, args.force):
        print("wrote", path)


if __name__ == "__main__":
    main()
