"""Tiny random-weight text-to-image models (SD1 / SD2 / SDXL shapes) in the real on-disk layouts.

- `tiny_t2i(kind, seed)`: the model in memory (a `T2IModel`), deterministic for a seed.
- `build_tiny_t2i_folder(folder, kind, seed)`: the same model as a diffusers folder.
- `write_tiny_single_file(path, kind, seed)`: the same model as one .safetensors in the original ldm/sgm
  key naming, with the `.yaml` that describes it beside it (as the WebUI expects) and a folder per text
  encoder (config.json + tokenizer files) that the yaml names, as the WebUI's own tiny test model does.

The architectures keep what matters for the code paths: the VAE downscales by 8 (four levels), SDXL has
two text encoders and size conditioning, SD2 conditions on the penultimate OpenCLIP layer. Channel
counts stay multiples of 32 because the original UNet and VAE hard-code 32-group GroupNorm.
"""

from __future__ import annotations

import math
import os
import re

import torch

from lib_elevator.loaders import (
    PAD_TOKEN,
    SD1_TEXT_PREFIX,
    SD2_TEXT_PREFIX,
    SDXL_TEXT_PREFIXES,
    STANDARD_SCHEDULER,
    UNET_PREFIX,
    VAE_PREFIX,
)
from lib_elevator.lora import original_unet_name, unet_block_names
from lib_elevator.t2i import T2I_KINDS, T2IModel
from lib_elevator.tiny import write_json
from lib_elevator.tokenizer import clip_tokenizer

TEXT_WIDTH = 32
SIZE_EMBED_DIM = 8  # SDXL's per-number size embedding (256 in the real model)
LATENT_SIZE = 8
VAE_CHANNELS = 32
VAE_LEVELS = 4  # downscale 2 ** (4 - 1) = 8, as in SD
SCALING_FACTOR = {"sd1": 0.18215, "sd2": 0.18215, "sdxl": 0.13025}


# ================================================================================== in-memory models
def tiny_unet_config(kind: str) -> dict:
    """diffusers UNet2DConditionModel config of the tiny model of `kind`."""
    common = {
        "sample_size": LATENT_SIZE,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (32, 64),
        "layers_per_block": 1,
    }
    if kind == "sd1":
        return {
            **common,
            "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            "cross_attention_dim": TEXT_WIDTH,
            "attention_head_dim": 2,  # diffusers' name for SD1's head *count*
        }
    if kind == "sd2":
        return {
            **common,
            "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            "cross_attention_dim": TEXT_WIDTH,
            "attention_head_dim": (2, 4),  # heads per level: 16 channels per head, as SD2's 64
            "use_linear_projection": True,
            "upcast_attention": True,
        }
    return {
        **common,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "cross_attention_dim": 2 * TEXT_WIDTH,  # both encoders' hidden states side by side
        "attention_head_dim": (2, 4),
        "use_linear_projection": True,
        "transformer_layers_per_block": (1, 2),
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": SIZE_EMBED_DIM,
        "projection_class_embeddings_input_dim": TEXT_WIDTH + 6 * SIZE_EMBED_DIM,  # pooled text + 6 sizes
    }


def tiny_vae_config(kind: str) -> dict:
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * VAE_LEVELS,
        "up_block_types": ("UpDecoderBlock2D",) * VAE_LEVELS,
        "block_out_channels": (VAE_CHANNELS,) * VAE_LEVELS,
        "layers_per_block": 1,
        "latent_channels": 4,
        "sample_size": LATENT_SIZE * 8,
        "scaling_factor": SCALING_FACTOR[kind],
    }


def tiny_text_config(family: str, layers: int = 2):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=TEXT_WIDTH,
        intermediate_size=2 * TEXT_WIDTH,
        num_hidden_layers=layers,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=TEXT_WIDTH,
        hidden_act="quick_gelu" if family == "clip" else "gelu",
        bos_token_id=0,
        pad_token_id=1,
        eos_token_id=2,
    )


def text_families(kind: str) -> list[str]:
    return {"sd1": ["clip"], "sd2": ["open_clip"], "sdxl": ["clip", "open_clip"]}[kind]


def randomise_constant_weights(module: torch.nn.Module, generator: torch.Generator) -> None:
    """diffusers/transformers start norms at 1/0 and some projections at 0. Make every such tensor
    random, so outputs depend on every weight and a swapped or dropped tensor shows in a round trip."""
    with torch.no_grad():
        for parameter in module.parameters():
            if torch.all(parameter == parameter.flatten()[0]):
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))


def tiny_t2i(kind: str = "sd1", seed: int = 0, v_prediction: bool = False) -> T2IModel:
    """The tiny model of `kind` in memory, float32 on CPU; the same for the same seed."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    if kind not in T2I_KINDS:
        raise ValueError(f"tiny T2I kind must be one of {', '.join(T2I_KINDS)}; got {kind!r}")
    with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed + 1)
        unet = UNet2DConditionModel(**tiny_unet_config(kind))
        vae = AutoencoderKL(**tiny_vae_config(kind))
        encoders = []
        for i, family in enumerate(text_families(kind)):
            cls = CLIPTextModelWithProjection if (kind == "sdxl" and i == 1) else CLIPTextModel
            encoders.append(cls(tiny_text_config(family)))
        for module in [unet, vae, *encoders]:
            randomise_constant_weights(module, generator)
            module.eval().requires_grad_(False)
    tokenizers = [clip_tokenizer(pad_token=PAD_TOKEN[family]) for family in text_families(kind)]
    return T2IModel(
        kind=kind,
        unet=unet,
        vae=vae,
        text_encoders=encoders,
        tokenizers=tokenizers,
        scheduler_config=tiny_scheduler_config(v_prediction),
        name=f"tiny-{kind}",
    )


def tiny_scheduler_config(v_prediction: bool = False) -> dict:
    """SD's training schedule with DDIMScheduler's keys, as diffusers writes scheduler_config.json."""
    return {"_class_name": "DDIMScheduler", **STANDARD_SCHEDULER,
            "prediction_type": "v_prediction" if v_prediction else "epsilon"}


# ================================================================================== diffusers folder
def build_tiny_t2i_folder(folder: str, kind: str = "sd1", seed: int = 0, v_prediction: bool = False) -> str:
    """Save the tiny model of `kind` as a diffusers folder (the layout `save_pretrained` writes)."""
    import diffusers

    model = tiny_t2i(kind, seed, v_prediction)
    os.makedirs(folder, exist_ok=True)
    model.unet.save_pretrained(os.path.join(folder, "unet"))
    model.vae.save_pretrained(os.path.join(folder, "vae"))
    index = {
        "_class_name": "StableDiffusionXLPipeline" if kind == "sdxl" else "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "DDIMScheduler"],
    }
    for i, (encoder, tokenizer) in enumerate(zip(model.text_encoders, model.tokenizers)):
        suffix = "" if i == 0 else f"_{i + 1}"
        encoder.save_pretrained(os.path.join(folder, "text_encoder" + suffix), safe_serialization=True)
        tokenizer.save_pretrained(os.path.join(folder, "tokenizer" + suffix))
        index["text_encoder" + suffix] = ["transformers", type(encoder).__name__]
        index["tokenizer" + suffix] = ["transformers", "CLIPTokenizer"]
    if kind != "sdxl":
        index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
    write_json(os.path.join(folder, "model_index.json"), index)
    scheduler = dict(model.scheduler_config, _diffusers_version=diffusers.__version__)
    write_json(os.path.join(folder, "scheduler", "scheduler_config.json"), scheduler)
    return folder


# ================================================================================== original naming
def original_unet_weights(unet) -> dict[str, torch.Tensor]:
    """UNet tensors under their ldm/sgm names (`model.diffusion_model.input_blocks.1.0.in_layers.0.weight` …)."""
    block_names = unet_block_names(unet)
    weights = {}
    for key, tensor in unet.state_dict().items():
        original = original_unet_name(key, block_names)
        if original is None:
            raise ValueError(f"UNet tensor {key} has no original name")
        weights[UNET_PREFIX + original] = tensor
    return weights


VAE_ATTENTION_INNER = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def original_vae_name(key: str, levels: int) -> str:
    """ldm name of a diffusers AutoencoderKL tensor. The ldm decoder numbers its levels from the
    lowest resolution up (up.3 runs first), diffusers in running order (up_blocks.0 runs first)."""
    match = re.fullmatch(
        r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.+)", key
    )
    if match:
        part, direction, level, kind, index, rest = match.groups()
        level = int(level) if direction == "down" else levels - 1 - int(level)
        if kind == "resnets":
            return f"{part}.{direction}.{level}.block.{index}.{rest.replace('conv_shortcut', 'nin_shortcut')}"
        return f"{part}.{direction}.{level}.{'downsample' if direction == 'down' else 'upsample'}.{rest}"
    match = re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key)
    if match:
        return f"{match.group(1)}.mid.block_{int(match.group(2)) + 1}.{match.group(3)}"
    match = re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", key)
    if match:
        return f"{match.group(1)}.mid.attn_1.{VAE_ATTENTION_INNER[match.group(2)]}.{match.group(3)}"
    return key.replace("conv_norm_out", "norm_out")  # conv_in, conv_out, quant_conv, post_quant_conv: same


def original_vae_weights(vae) -> dict[str, torch.Tensor]:
    levels = len(vae.config.block_out_channels)
    weights = {}
    for key, tensor in vae.state_dict().items():
        original = original_vae_name(key, levels)
        if ".mid.attn_1." in original and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]  # ldm's VAE attention projections are 1x1 convolutions
        weights[VAE_PREFIX + original] = tensor
    return weights


def clip_weights(encoder, prefix: str) -> dict[str, torch.Tensor]:
    """OpenAI CLIP in ldm/sgm checkpoints keeps the transformers names under a prefix."""
    return {prefix + key: tensor for key, tensor in encoder.state_dict().items() if key.startswith("text_model.")}


def open_clip_layer(state: dict, i: int, prefix: str) -> dict[str, torch.Tensor]:
    source = f"text_model.encoder.layers.{i}."
    target = f"{prefix}transformer.resblocks.{i}."
    attention = source + "self_attn."
    weights = {
        target + "attn.in_proj_weight": torch.cat([state[f"{attention}{p}_proj.weight"] for p in "qkv"]),
        target + "attn.in_proj_bias": torch.cat([state[f"{attention}{p}_proj.bias"] for p in "qkv"]),
    }
    renames = {
        "self_attn.out_proj": "attn.out_proj",
        "layer_norm1": "ln_1",
        "layer_norm2": "ln_2",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
    }
    for name, original in renames.items():
        for param in ("weight", "bias"):
            weights[f"{target}{original}.{param}"] = state[f"{source}{name}.{param}"]
    return weights


def open_clip_weights(encoder, prefix: str, unused_last_layer: bool, generator: torch.Generator) -> dict:
    """OpenCLIP's own naming (fused in_proj, c_fc/c_proj, ln_final, positional_embedding parameter).
    `unused_last_layer` appends a random extra resblock: SD2 checkpoints hold the full OpenCLIP tower
    and condition on its penultimate layer, which is all the diffusers model keeps."""
    state = encoder.state_dict()
    layers = encoder.config.num_hidden_layers
    weights = {
        prefix + "token_embedding.weight": state["text_model.embeddings.token_embedding.weight"],
        prefix + "positional_embedding": state["text_model.embeddings.position_embedding.weight"],
        prefix + "ln_final.weight": state["text_model.final_layer_norm.weight"],
        prefix + "ln_final.bias": state["text_model.final_layer_norm.bias"],
        prefix + "logit_scale": torch.tensor(math.log(1 / 0.07)),
    }
    for i in range(layers):
        weights.update(open_clip_layer(state, i, prefix))
    if unused_last_layer:
        template = open_clip_layer(state, 0, prefix)
        for key, tensor in template.items():
            extra = key.replace(".resblocks.0.", f".resblocks.{layers}.")
            weights[extra] = 0.05 * torch.randn(tensor.shape, generator=generator)
    if "text_projection.weight" in state:
        projection = state["text_projection.weight"].T  # open_clip applies x @ text_projection
    else:
        projection = 0.05 * torch.randn(encoder.config.hidden_size, encoder.config.projection_dim, generator=generator)
    weights[prefix + "text_projection"] = projection.contiguous()
    return weights


def original_weights(model: T2IModel, seed: int = 0) -> dict[str, torch.Tensor]:
    """The whole model as one ldm/sgm-named state dict."""
    generator = torch.Generator().manual_seed(seed + 2)
    weights = {**original_unet_weights(model.unet), **original_vae_weights(model.vae)}
    if model.kind == "sd1":
        weights.update(clip_weights(model.text_encoders[0], SD1_TEXT_PREFIX))
    elif model.kind == "sd2":
        weights.update(open_clip_weights(model.text_encoders[0], SD2_TEXT_PREFIX, True, generator))
    else:
        weights.update(clip_weights(model.text_encoders[0], SDXL_TEXT_PREFIXES[0]))
        weights.update(open_clip_weights(model.text_encoders[1], SDXL_TEXT_PREFIXES[1], False, generator))
    return {key: tensor.detach().contiguous() for key, tensor in weights.items()}


# ================================================================================== original yaml
def tiny_unet_params(kind: str) -> dict:
    """The tiny UNet in ldm/sgm `UNetModel` parameters (what `tiny_unet_config` says in diffusers terms)."""
    params = {
        "in_channels": 4,
        "out_channels": 4,
        "model_channels": 32,
        "channel_mult": [1, 2],
        "num_res_blocks": 1,
        "use_spatial_transformer": True,
        "legacy": False,
    }
    if kind != "sdxl":
        params["image_size"] = LATENT_SIZE  # ldm's UNetModel requires it (and ignores it)
    if kind == "sd1":
        return {
            **params,
            "attention_resolutions": [1, 2],
            "num_heads": 2,
            "transformer_depth": 1,
            "context_dim": TEXT_WIDTH,
        }
    if kind == "sd2":
        return {
            **params,
            "attention_resolutions": [1, 2],
            "num_head_channels": 16,
            "use_linear_in_transformer": True,
            "transformer_depth": 1,
            "context_dim": TEXT_WIDTH,
        }
    return {
        **params,
        "adm_in_channels": TEXT_WIDTH + 6 * SIZE_EMBED_DIM,
        "num_classes": "sequential",
        "attention_resolutions": [2],
        "num_head_channels": 16,
        "use_linear_in_transformer": True,
        "transformer_depth": [1, 2],
        "context_dim": 2 * TEXT_WIDTH,
    }


def tiny_first_stage(kind: str) -> dict:
    target = (
        "sgm.models.autoencoder.AutoencoderKLInferenceWrapper"
        if kind == "sdxl"
        else "ldm.models.autoencoder.AutoencoderKL"
    )
    ddconfig = {
        "double_z": True,
        "z_channels": 4,
        "resolution": LATENT_SIZE * 8,
        "in_channels": 3,
        "out_ch": 3,
        "ch": VAE_CHANNELS,
        "ch_mult": [1] * VAE_LEVELS,
        "num_res_blocks": 1,
        "attn_resolutions": [],
        "dropout": 0.0,
    }
    return {
        "target": target,
        "params": {"embed_dim": 4, "ddconfig": ddconfig, "lossconfig": {"target": "torch.nn.Identity"}},
    }


def tiny_original_config(kind: str, text_folders: list[str], v_prediction: bool = False) -> dict:
    """The yaml of a tiny single file, in the structure of the real ldm (SD1/SD2) and sgm (SDXL) configs.
    The text encoders' `version` names local folders (config.json + tokenizer), as the WebUI's tiny does."""
    if kind == "sdxl":
        scaling = "VScaling" if v_prediction else "EpsScaling"
        size_embedder = {
            "is_trainable": False,
            "target": "sgm.modules.encoders.modules.ConcatTimestepEmbedderND",
            "params": {"outdim": SIZE_EMBED_DIM},
        }
        emb_models = [
            {
                "is_trainable": False,
                "input_key": "txt",
                "target": "sgm.modules.encoders.modules.FrozenCLIPEmbedder",
                "params": {"layer": "hidden", "layer_idx": 1, "version": text_folders[0]},
            },
            {
                "is_trainable": False,
                "input_key": "txt",
                "target": "sgm.modules.encoders.modules.FrozenOpenCLIPEmbedder2",
                "params": {"version": text_folders[1], "layer": "penultimate", "always_return_pooled": True},
            },
            {**size_embedder, "input_key": "original_size_as_tuple"},
            {**size_embedder, "input_key": "crop_coords_top_left"},
            {**size_embedder, "input_key": "target_size_as_tuple"},
        ]
        params = {
            "scale_factor": SCALING_FACTOR[kind],
            "denoiser_config": {
                "target": "sgm.modules.diffusionmodules.denoiser.DiscreteDenoiser",
                "params": {
                    "num_idx": 1000,
                    "scaling_config": {"target": f"sgm.modules.diffusionmodules.denoiser_scaling.{scaling}"},
                    "discretization_config": {
                        "target": "sgm.modules.diffusionmodules.discretizer.LegacyDDPMDiscretization"
                    },
                },
            },
            "network_config": {
                "target": "sgm.modules.diffusionmodules.openaimodel.UNetModel",
                "params": tiny_unet_params(kind),
            },
            "conditioner_config": {"target": "sgm.modules.GeneralConditioner", "params": {"emb_models": emb_models}},
            "first_stage_config": tiny_first_stage(kind),
        }
        return {"model": {"target": "sgm.models.diffusion.DiffusionEngine", "params": params}}
    if kind == "sd2":
        cond_stage = {
            "target": "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder",
            "params": {"freeze": True, "layer": "penultimate", "version": text_folders[0]},
        }
    else:
        cond_stage = {
            "target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder",
            "params": {"version": text_folders[0]},
        }
    params = {
        "linear_start": 0.00085,
        "linear_end": 0.012,
        "timesteps": 1000,
        "first_stage_key": "jpg",
        "cond_stage_key": "txt",
        "image_size": LATENT_SIZE,
        "channels": 4,
        "cond_stage_trainable": False,
        "conditioning_key": "crossattn",
        "scale_factor": SCALING_FACTOR[kind],
        "use_ema": False,
        "unet_config": {
            "target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
            "params": tiny_unet_params(kind),
        },
        "first_stage_config": tiny_first_stage(kind),
        "cond_stage_config": cond_stage,
    }
    if v_prediction:
        params = {"parameterization": "v", **params}
    return {"model": {"target": "ldm.models.diffusion.ddpm.LatentDiffusion", "params": params}}


def write_text_encoder_folder(folder: str, encoder, family: str, unused_last_layer: bool) -> str:
    """config.json of the original text tower (one layer more for SD2's unused last one) and its tokenizer."""
    os.makedirs(folder, exist_ok=True)
    config = encoder.config.to_dict()
    config["num_hidden_layers"] += 1 if unused_last_layer else 0
    config["architectures"] = [type(encoder).__name__]
    write_json(os.path.join(folder, "config.json"), config)
    clip_tokenizer(pad_token=PAD_TOKEN[family]).save_pretrained(folder)
    return folder


def write_tiny_single_file(path: str, kind: str, seed: int = 0, v_prediction: bool = False) -> str:
    """Write the tiny model of `kind` as `path` (.safetensors, original key naming), `<stem>.yaml` beside
    it and `<stem>-text-encoder[-2]/` folders the yaml names."""
    import yaml
    from safetensors.torch import save_file

    model = tiny_t2i(kind, seed, v_prediction)
    stem = os.path.splitext(os.path.abspath(path))[0]
    os.makedirs(os.path.dirname(stem), exist_ok=True)
    folders = []
    for i, (encoder, family) in enumerate(zip(model.text_encoders, text_families(kind))):
        folder = stem + ("-text-encoder" if i == 0 else f"-text-encoder-{i + 1}")
        folders.append(write_text_encoder_folder(folder, encoder, family, unused_last_layer=kind == "sd2"))
    save_file(original_weights(model, seed), path)
    with open(stem + ".yaml", "w", encoding="utf-8") as f:
        yaml.safe_dump(tiny_original_config(kind, folders, v_prediction), f, sort_keys=False)
    return path
