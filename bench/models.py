"""Models the benchmarks run on, built once into a cache folder and loaded through the project's
loaders (`load_t2i`, `load_t2v`), so loading takes the path a user's download takes.

- tiny: the demo's tiny random-weight SD1 and ZeroScope folders (`lib_elevator.tiny`).
- full: random-weight models of the real sizes, written in the diffusers folder layout:
  SD1.5 (UNet2DConditionModel 860M, AutoencoderKL 84M, CLIP ViT-L/14 text tower 123M) and
  ZeroScope v2 576w (UNet3DConditionModel 1.4G, OpenCLIP-H text tower 340M as CLIPTextModel,
  the SD VAE). About 4.3 GB + 7.3 GB of float32 safetensors; building takes a few minutes.

`python -m bench.models` builds both and prints the folders and parameter counts.
"""

from __future__ import annotations

import argparse
import json
import os
import time

CACHE = os.path.join(os.path.expanduser("~"), ".cache", "videoelevator", "bench-models")

# --- SD1.5 (runwayml/stable-diffusion-v1-5, diffusers layout). The numbers are the SD1.5 architecture:
# the original ldm config (model_channels 320, channel_mult 1,2,4,4, num_res_blocks 2, attention at the
# first three levels, 8 heads, context_dim 768) in diffusers' naming; the same numbers are in
# lib_elevator.loaders.SD1_ORIGINAL.
SD15_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,  # diffusers' name for SD1's head count
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "act_fn": "silu",
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
}
# The kl-f8 VAE of SD1.x/SD2.x (and of ModelScope/ZeroScope): ldm ddconfig ch 128, ch_mult 1,2,4,4,
# num_res_blocks 2, z_channels 4, scale factor 0.18215.
SD_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "act_fn": "silu",
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
# OpenAI CLIP ViT-L/14's text tower (SD1.x's text encoder): width 768, 12 layers, 12 heads, MLP 3072.
CLIP_L_TEXT = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}

# --- ZeroScope v2 576w (cerspense/zeroscope_v2_576w), a fine-tune of ModelScope text-to-video-ms-1.7b with
# the same architecture: its UNet3DConditionModel is SD's UNet layout (block_out_channels 320,640,1280,1280,
# layers_per_block 2, cross-attention in the first three levels) with temporal convolutions and temporal
# attention, 64-channel heads and a 1024-wide text context (OpenCLIP-H); 1.41G parameters (2.8 GB in fp16).
ZEROSCOPE_UNET = {
    "sample_size": 40,  # 320 px / 8; only a default, the UNet takes any size
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"],
    "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"],
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "cross_attention_dim": 1024,
    "attention_head_dim": 64,
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "act_fn": "silu",
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
}
# ModelScope's text encoder is OpenCLIP ViT-H/14's text tower without its last layer (it conditions on the
# penultimate layer), stored as a transformers CLIPTextModel: width 1024, 23 layers, 16 heads, MLP 4096, GELU.
OPENCLIP_H_TEXT = {
    "vocab_size": 49408,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 23,
    "num_attention_heads": 16,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "projection_dim": 512,
}
# The scheduler both ship: DDIM with SD's scaled_linear training table.
DDIM_SCHEDULER = {
    "_class_name": "DDIMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
}


def _write_json(path: str, data: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)


def _save(module, folder: str) -> int:
    """save_pretrained as safetensors; returns the parameter count. Frees nothing: the caller drops it."""
    module.save_pretrained(folder, safe_serialization=True)
    return sum(p.numel() for p in module.parameters())


def _save_tokenizer(folder: str, pad_token: str) -> None:
    from lib_elevator.tokenizer import clip_tokenizer

    clip_tokenizer(pad_token=pad_token).save_pretrained(folder)


def _mark_done(folder: str, counts: dict) -> None:
    _write_json(os.path.join(folder, "bench-built.json"), counts)


def _done(folder: str) -> bool:
    return os.path.exists(os.path.join(folder, "bench-built.json"))


def build_full_sd15(folder: str, seed: int = 0) -> str:
    """A random-weight SD1.5-sized diffusers T2I folder (one component in memory at a time)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if _done(folder):
        return folder
    torch.manual_seed(seed)
    counts = {}
    with torch.no_grad():
        counts["unet"] = _save(UNet2DConditionModel(**SD15_UNET).eval(), os.path.join(folder, "unet"))
        counts["vae"] = _save(AutoencoderKL(**SD_VAE).eval(), os.path.join(folder, "vae"))
        counts["text_encoder"] = _save(
            CLIPTextModel(CLIPTextConfig(**CLIP_L_TEXT)).eval(), os.path.join(folder, "text_encoder")
        )
    _save_tokenizer(os.path.join(folder, "tokenizer"), "<|endoftext|>")
    _write_json(
        os.path.join(folder, "model_index.json"),
        {
            "_class_name": "StableDiffusionPipeline",
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "scheduler": ["diffusers", "DDIMScheduler"],
            "safety_checker": [None, None],
            "feature_extractor": [None, None],
            "requires_safety_checker": False,
        },
    )
    _write_json(os.path.join(folder, "scheduler", "scheduler_config.json"), DDIM_SCHEDULER)
    _mark_done(folder, counts)
    return folder


def build_full_zeroscope(folder: str, seed: int = 1) -> str:
    """A random-weight ZeroScope-v2-sized diffusers text-to-video folder."""
    import torch
    from diffusers import AutoencoderKL, UNet3DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if _done(folder):
        return folder
    torch.manual_seed(seed)
    counts = {}
    with torch.no_grad():
        counts["unet"] = _save(UNet3DConditionModel(**ZEROSCOPE_UNET).eval(), os.path.join(folder, "unet"))
        counts["text_encoder"] = _save(
            CLIPTextModel(CLIPTextConfig(**OPENCLIP_H_TEXT)).eval(), os.path.join(folder, "text_encoder")
        )
        counts["vae"] = _save(AutoencoderKL(**SD_VAE).eval(), os.path.join(folder, "vae"))
    _save_tokenizer(os.path.join(folder, "tokenizer"), "!")  # OpenCLIP pads with "!"
    _write_json(
        os.path.join(folder, "model_index.json"),
        {
            "_class_name": "TextToVideoSDPipeline",
            "unet": ["diffusers", "UNet3DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "scheduler": ["diffusers", "DDIMScheduler"],
        },
    )
    _write_json(os.path.join(folder, "scheduler", "scheduler_config.json"), DDIM_SCHEDULER)
    _mark_done(folder, counts)
    return folder


def tiny_folders(cache: str = CACHE) -> tuple[str, str]:
    """The tiny SD1 T2I and ZeroScope T2V folders (the CLI demo's models), built once."""
    from lib_elevator.tiny import demo_folders

    return demo_folders(cache)


def full_folders(cache: str = CACHE) -> tuple[str, str]:
    """The full-size random-weight SD1.5 and ZeroScope folders, built once."""
    return (
        build_full_sd15(os.path.join(cache, "sd15-random")),
        build_full_zeroscope(os.path.join(cache, "zeroscope-v2-random")),
    )


def folders(size: str, cache: str = CACHE) -> tuple[str, str]:
    if size == "tiny":
        return tiny_folders(cache)
    if size == "full":
        return full_folders(cache)
    raise ValueError(f"model size must be tiny or full; got {size!r}")


def load(size: str, device="cpu", dtype=None, cache: str = CACHE):
    """(T2IModel, T2VBackend, load seconds) for `size`, loaded through the project's loaders."""
    import torch

    from lib_elevator.loaders import load_t2i
    from lib_elevator.t2v.registry import load_t2v

    t2i_path, t2v_path = folders(size, cache)
    started = time.perf_counter()
    t2i = load_t2i(t2i_path, device=device, dtype=dtype or torch.float32)
    t2v = load_t2v(t2v_path, device=device, dtype=dtype or torch.float32)
    return t2i, t2v, time.perf_counter() - started


def parameter_counts(t2i, t2v) -> dict[str, int]:
    def count(module) -> int:
        return sum(p.numel() for p in module.parameters())

    counts = {"T2I UNet": count(t2i.unet), "T2I VAE": count(t2i.vae), "T2I text": count(t2i.text_encoders[0])}
    counts.update({"T2V UNet": count(t2v.unet), "T2V text": count(t2v.text_encoder)})
    if t2v.vae is not None:
        counts["T2V VAE"] = count(t2v.vae)
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.models", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", default=CACHE, help="folder the models are built into")
    parser.add_argument("--size", choices=["tiny", "full", "both"], default="both")
    args = parser.parse_args(argv)
    for size in ("tiny", "full") if args.size == "both" else (args.size,):
        started = time.perf_counter()
        t2i_path, t2v_path = folders(size, args.cache)
        print(f"{size}: {t2i_path}  {t2v_path}  ({time.perf_counter() - started:.0f} s)")
        for path in (t2i_path, t2v_path):
            marker = os.path.join(path, "bench-built.json")
            if os.path.exists(marker):
                with open(marker, encoding="utf-8") as f:
                    print("  ", os.path.basename(path), {k: f"{v / 1e6:.0f}M" for k, v in json.load(f).items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
