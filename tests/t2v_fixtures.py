"""Tiny models for the T2V backend tests: an SD1 base T2IModel in memory, and the T2V layouts on disk."""

from __future__ import annotations

import os

import torch

from lib_elevator.t2i import T2IModel
from lib_elevator.tiny import t2v as tiny

SD1_SCHEDULER_CONFIG = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}


def tiny_sd1_base(seed: int = 0, kind: str = "sd1") -> T2IModel:
    """An SD1-kind T2IModel whose UNet fits the tiny motion modules (`TINY_SD1_UNET_CONFIG`)."""
    from lib_elevator.tokenizer import clip_tokenizer

    return T2IModel(
        kind=kind,
        unet=tiny.tiny_sd1_unet(seed),
        vae=tiny.tiny_vae(seed + 1),
        text_encoders=[tiny.tiny_text_encoder(seed + 2, tiny.TINY_SD1_UNET_CONFIG["cross_attention_dim"])],
        tokenizers=[clip_tokenizer()],
        scheduler_config=dict(SD1_SCHEDULER_CONFIG),
        name=f"tiny-{kind}",
    )


def build_model_folder(root: str) -> dict[str, str]:
    """Every tiny T2V layout under `root`, and a few things that are not T2V models."""
    paths = {
        "zeroscope": tiny.build_tiny_zeroscope_folder(os.path.join(root, "zeroscope"), seed=0),
        "mm_v1": tiny.write_tiny_motion_module(os.path.join(root, "mm_sd_v15.safetensors"), "v1", seed=1),
        "mm_v2": tiny.write_tiny_motion_module(os.path.join(root, "mm_sd_v15_v2.safetensors"), "v2", seed=2),
        "mm_v3": tiny.write_tiny_motion_module(os.path.join(root, "v3_sd15_mm.safetensors"), "v3", seed=3),
        "mm_v2_ckpt": tiny.write_tiny_motion_module(os.path.join(root, "mm_sd_v15_v2.ckpt"), "v2", seed=2),
        "animatelcm": tiny.build_tiny_animatelcm_folder(os.path.join(root, "AnimateLCM"), seed=4),
    }
    # Not T2V models: a LoRA file, a text file, an empty folder, an SD image-model folder.
    from safetensors.torch import save_file

    save_file({"lora_unet_x.lora_down.weight": torch.zeros(1, 1)}, os.path.join(root, "some_lora.safetensors"))
    with open(os.path.join(root, "notes.txt"), "w") as f:
        f.write("not a model")
    os.makedirs(os.path.join(root, "empty"), exist_ok=True)
    sd_folder = os.path.join(root, "sd15")
    os.makedirs(os.path.join(sd_folder, "unet"), exist_ok=True)
    with open(os.path.join(sd_folder, "model_index.json"), "w") as f:
        f.write('{"_class_name": "StableDiffusionPipeline"}')
    with open(os.path.join(sd_folder, "unet", "config.json"), "w") as f:
        f.write('{"_class_name": "UNet2DConditionModel"}')
    return paths
