"""Loading a text-to-image model (SD1.x, SD2.x, SDXL base) into a `T2IModel` of diffusers components.

Two sources:
- a diffusers folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/, and for
  SDXL text_encoder_2/ and tokenizer_2/);
- a single checkpoint file in the original ldm/sgm key naming (.safetensors; .ckpt/.pt only when the
  caller opts into pickles). Its architecture comes from a `.yaml` beside it (same stem, as in the
  WebUI) or `config_file`, else from the built-in original configs of the standard models.

Weights are converted with diffusers' own single-file helpers, placed into models built on the meta
device (no random initialisation of billions of weights), then LoRAs are merged and the result moved
to the requested device and dtype. diffusers *pipelines* are never imported (they do not import next to
the WebUI's transformers 4.30.2).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from dataclasses import dataclass
from types import SimpleNamespace

import torch

from lib_elevator.errors import ModelError, UserError, as_model_error
from lib_elevator.lora import merge_lora
from lib_elevator.t2i import T2IModel
from lib_elevator.tokenizer import check_vocabulary, clip_tokenizer
from lib_elevator.weights import (
    PICKLE_EXTENSIONS,
    WEIGHT_EXTENSIONS,
    as_float32,
    read_folder_weights,
    read_state_dict,
    unwrap_state_dict,
)

logger = logging.getLogger(__name__)

# SD's training schedule; every SD1/SD2/SDXL checkpoint uses it.
STANDARD_SCHEDULER = {
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "set_alpha_to_one": False,
    "clip_sample": False,
    "timestep_spacing": "leading",
    "prediction_type": "epsilon",
}

# Key prefixes of the original checkpoints.
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_TEXT_PREFIX = "cond_stage_model.transformer."  # OpenAI CLIP ViT-L/14 in transformers naming
SD2_TEXT_PREFIX = "cond_stage_model.model."  # OpenCLIP ViT-H/14 in open_clip naming
SDXL_TEXT_PREFIXES = ("conditioner.embedders.0.transformer.", "conditioner.embedders.1.model.")

PAD_TOKEN = {"clip": "<|endoftext|>", "open_clip": "!"}  # OpenCLIP pads with token 0, which is "!"
TEXT_ACTIVATION = {"clip": "quick_gelu", "open_clip": "gelu"}
TEXT_HEAD_DIM = 64  # every CLIP / OpenCLIP text tower SD uses (ViT-L 12x64, ViT-H 16x64, bigG 20x64)

# The original (ldm/sgm yaml) configs of the standard architectures, reduced to the fields used here.
SD1_ORIGINAL = {
    "model": {
        "params": {
            "scale_factor": 0.18215,
            "image_size": 64,
            "unet_config": {
                "params": {
                    "in_channels": 4,
                    "out_channels": 4,
                    "model_channels": 320,
                    "attention_resolutions": [4, 2, 1],
                    "num_res_blocks": 2,
                    "channel_mult": [1, 2, 4, 4],
                    "num_heads": 8,
                    "transformer_depth": 1,
                    "context_dim": 768,
                }
            },
            "first_stage_config": {
                "params": {
                    "ddconfig": {
                        "z_channels": 4,
                        "in_channels": 3,
                        "out_ch": 3,
                        "ch": 128,
                        "ch_mult": [1, 2, 4, 4],
                        "num_res_blocks": 2,
                    }
                }
            },
            "cond_stage_config": {"target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder"},
        }
    }
}
SD2_ORIGINAL = {
    "model": {
        "params": {
            "scale_factor": 0.18215,
            "image_size": 96,
            "unet_config": {
                "params": {
                    "in_channels": 4,
                    "out_channels": 4,
                    "model_channels": 320,
                    "attention_resolutions": [4, 2, 1],
                    "num_res_blocks": 2,
                    "channel_mult": [1, 2, 4, 4],
                    "num_head_channels": 64,
                    "use_linear_in_transformer": True,
                    "transformer_depth": 1,
                    "context_dim": 1024,
                }
            },
            "first_stage_config": SD1_ORIGINAL["model"]["params"]["first_stage_config"],
            "cond_stage_config": {
                "target": "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder",
                "params": {"layer": "penultimate"},
            },
        }
    }
}
SDXL_ORIGINAL = {
    "model": {
        "params": {
            "scale_factor": 0.13025,
            "image_size": 128,
            "network_config": {
                "params": {
                    "adm_in_channels": 2816,
                    "num_classes": "sequential",
                    "in_channels": 4,
                    "out_channels": 4,
                    "model_channels": 320,
                    "attention_resolutions": [4, 2],
                    "num_res_blocks": 2,
                    "channel_mult": [1, 2, 4],
                    "num_head_channels": 64,
                    "use_linear_in_transformer": True,
                    "transformer_depth": [1, 2, 10],
                    "context_dim": 2048,
                }
            },
            "conditioner_config": {
                "params": {
                    "emb_models": [
                        {"target": "sgm.modules.encoders.modules.FrozenCLIPEmbedder"},
                        {"target": "sgm.modules.encoders.modules.FrozenOpenCLIPEmbedder2"},
                        {"target": "sgm.modules.encoders.modules.ConcatTimestepEmbedderND", "params": {"outdim": 256}},
                    ]
                }
            },
            "first_stage_config": SD1_ORIGINAL["model"]["params"]["first_stage_config"],
        }
    }
}
BUILTIN_ORIGINAL = {"sd1": SD1_ORIGINAL, "sd2": SD2_ORIGINAL, "sdxl": SDXL_ORIGINAL}
DEFAULT_LATENT_SIZE = {"sd1": 64, "sd2": 96, "sdxl": 128}
SD2_BASE_GLOBAL_STEP = 875000  # the 512px epsilon SD2 base; other SD2 checkpoints are 768-v


# ================================================================================== public API
def load_t2i(
    path: str,
    loras=(),
    device="cpu",
    dtype: torch.dtype = torch.float32,
    config_file: str | None = None,
    tokenizer_dir: str | None = None,
    allow_pickle: bool = False,
) -> T2IModel:
    """Load a T2I model from a diffusers folder or a single checkpoint file, merge `loras`
    (a sequence of (path, weight)) into its weights, and move it to `device` / `dtype`. Every
    problem with the files is a ModelError naming the file."""
    try:
        return _load_t2i(path, loras, device, dtype, config_file, tokenizer_dir, allow_pickle)
    except UserError:
        raise
    except (ValueError, OSError) as error:  # what diffusers/transformers/safetensors raise on bad files
        raise as_model_error(error) from error


def _load_t2i(path, loras, device, dtype, config_file, tokenizer_dir, allow_pickle) -> T2IModel:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelError(f"T2I model not found: {path}")
    if os.path.isdir(path):
        model = load_diffusers_folder(path, tokenizer_dir=tokenizer_dir, allow_pickle=allow_pickle)
    else:
        model = load_single_file(path, config_file=config_file, tokenizer_dir=tokenizer_dir, allow_pickle=allow_pickle)
    # Merge in float32 before any cast to half precision: the small LoRA deltas survive rounding better.
    for lora_path, weight in loras:
        changed = merge_lora(lora_modules(model), os.fspath(lora_path), float(weight))
        logger.info("merged LoRA %s (weight %s) into %d layers", lora_path, weight, changed)
    return model.to(device=device, dtype=dtype)


def lora_modules(model: T2IModel) -> dict[str, torch.nn.Module]:
    """The prefix -> module map `merge_lora` resolves LoRA keys against."""
    roots = {"unet": model.unet}
    for name, encoder in zip(("text_encoder", "text_encoder_2"), model.text_encoders):
        roots[name] = encoder
    return roots


# ================================================================================== building models
def build_with_weights(make_model, state_dict: dict, what: str, source: str, unexpected_ok=lambda key: False):
    """`make_model()` with `state_dict` loaded. The model is built on the meta device and takes the
    checkpoint's tensors directly, which skips the random initialisation; if something outside the state
    dict (a non-persistent buffer) is left on meta, the model is built normally instead."""
    try:
        with torch.device("meta"):
            model = make_model()
        result = model.load_state_dict(state_dict, strict=False, assign=True)
        if any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers())):
            model = make_model()
            result = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as error:  # size mismatches
        detail = str(error).strip().splitlines()
        raise ValueError(f"{source}: the {what} weights do not fit its architecture: {' '.join(detail[:4])}") from None
    if result.missing_keys:
        raise ValueError(
            f"{source}: the {what} weights lack {len(result.missing_keys)} tensors the architecture needs, "
            f"e.g. {', '.join(result.missing_keys[:3])}"
        )
    unexpected = [k for k in result.unexpected_keys if not unexpected_ok(k)]
    if unexpected:
        raise ValueError(
            f"{source}: the {what} weights hold {len(unexpected)} tensors the architecture lacks, "
            f"e.g. {', '.join(unexpected[:3])}"
        )
    return model.eval().requires_grad_(False)


def text_encoder_class(with_projection: bool):
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    return CLIPTextModelWithProjection if with_projection else CLIPTextModel


def build_text_encoder(config, state_dict: dict, with_projection: bool, what: str, source: str):
    cls = text_encoder_class(with_projection)
    state_dict = dict(state_dict)
    # Position ids are a constant; some merged checkpoints carry corrupted (float, rounded) copies.
    state_dict["text_model.embeddings.position_ids"] = torch.arange(config.max_position_embeddings)[None]
    return build_with_weights(
        lambda: cls(config),
        state_dict,
        what,
        source,
        unexpected_ok=lambda key: key.endswith("position_ids"),
    )


# ================================================================================== diffusers folders
def load_diffusers_folder(folder: str, tokenizer_dir: str | None = None, allow_pickle: bool = False) -> T2IModel:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig

    for required in ("model_index.json", "unet", "vae", "text_encoder"):
        if not os.path.exists(os.path.join(folder, required)):
            raise FileNotFoundError(f"{folder} is not a diffusers T2I folder: it has no {required}")
    unet_config = UNet2DConditionModel.load_config(os.path.join(folder, "unet"))
    text_config = CLIPTextConfig.from_pretrained(os.path.join(folder, "text_encoder"), local_files_only=True)
    kind = folder_kind(folder, unet_config, text_config)

    unet = build_with_weights(
        lambda: UNet2DConditionModel.from_config(unet_config),
        read_folder_weights(os.path.join(folder, "unet"), allow_pickle),
        "UNet",
        folder,
    )
    vae_config = AutoencoderKL.load_config(os.path.join(folder, "vae"))
    vae = build_with_weights(
        lambda: AutoencoderKL.from_config(vae_config),
        read_folder_weights(os.path.join(folder, "vae"), allow_pickle),
        "VAE",
        folder,
    )
    encoders = [folder_text_encoder(folder, "text_encoder", text_config, False, allow_pickle)]
    tokenizers = [
        folder_tokenizer(folder, "tokenizer", tokenizer_dir, PAD_TOKEN["open_clip" if kind == "sd2" else "clip"])
    ]
    if kind == "sdxl":
        config_2 = CLIPTextConfig.from_pretrained(os.path.join(folder, "text_encoder_2"), local_files_only=True)
        encoders.append(folder_text_encoder(folder, "text_encoder_2", config_2, True, allow_pickle))
        tokenizers.append(folder_tokenizer(folder, "tokenizer_2", tokenizer_dir, PAD_TOKEN["open_clip"]))
    for sub, tokenizer, encoder in zip(("text_encoder", "text_encoder_2"), tokenizers, encoders):
        check_vocabulary(tokenizer, encoder.config.vocab_size, f"{folder}, {sub}")
    return T2IModel(
        kind=kind,
        unet=unet,
        vae=vae,
        text_encoders=encoders,
        tokenizers=tokenizers,
        scheduler_config=folder_scheduler_config(folder),
        name=os.path.basename(os.path.normpath(folder)),
    )


def folder_kind(folder: str, unet_config: dict, text_config) -> str:
    has_second_encoder = os.path.isdir(os.path.join(folder, "text_encoder_2"))
    if unet_config.get("addition_embed_type") == "text_time" or has_second_encoder:
        if not has_second_encoder:
            raise ValueError(f"{folder}: SDXL UNet without text_encoder_2/ (the SDXL refiner is not supported)")
        return "sdxl"
    # SD2 uses OpenCLIP ViT-H (1024 wide, GELU); SD1 OpenAI's CLIP ViT-L (768 wide, quick GELU).
    if unet_config.get("cross_attention_dim") == 1024 or text_config.hidden_act == "gelu":
        return "sd2"
    return "sd1"


def folder_text_encoder(folder: str, sub: str, config, with_projection: bool, allow_pickle: bool):
    weights = read_folder_weights(os.path.join(folder, sub), allow_pickle)
    # Some SD text_encoder/ folders hold a CLIPTextModelWithProjection; the model uses no projection there.
    if not with_projection:
        weights.pop("text_projection.weight", None)
    return build_text_encoder(config, weights, with_projection, sub, folder)


def folder_tokenizer(folder: str, sub: str, tokenizer_dir: str | None, default_pad: str):
    """The folder's own tokenizer; `tokenizer_dir` (or CLIP's built-in vocabulary) only when it has none."""
    own = os.path.join(folder, sub)
    if os.path.isdir(own):
        return clip_tokenizer(own, pad_token=saved_pad_token(own, default_pad))
    logger.warning("%s has no %s/; using %s", folder, sub, tokenizer_dir or "CLIP's built-in tokenizer")
    return clip_tokenizer(tokenizer_dir, pad_token=default_pad)


def saved_pad_token(tokenizer_folder: str, default_pad: str) -> str:
    """The pad token a saved tokenizer names (SD2 and SDXL's second tokenizer pad with "!")."""
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = os.path.join(tokenizer_folder, name)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                pad = json.load(f).get("pad_token")
            if isinstance(pad, dict):
                pad = pad.get("content")
            if pad:
                return pad
    return default_pad


def folder_scheduler_config(folder: str) -> dict:
    path = os.path.join(folder, "scheduler", "scheduler_config.json")
    saved = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    else:
        logger.warning("%s has no scheduler/scheduler_config.json; using SD's standard schedule", folder)
    return {key: saved.get(key, default) for key, default in STANDARD_SCHEDULER.items()}


# ================================================================================== single files
def load_single_file(
    path: str, config_file: str | None = None, tokenizer_dir: str | None = None, allow_pickle: bool = False
) -> T2IModel:
    checkpoint, global_step = read_checkpoint(path, allow_pickle)
    kind = checkpoint_kind(checkpoint, path)
    yaml_path = config_file or yaml_beside(path)
    original = read_original_config(yaml_path) if yaml_path else BUILTIN_ORIGINAL[kind]
    source = f"{path} (config {yaml_path})" if yaml_path else path
    config_dir = os.path.dirname(os.path.abspath(yaml_path)) if yaml_path else None

    prediction_type = original_prediction_type(original, kind, global_step, has_yaml=yaml_path is not None)
    unet = single_file_unet(original, checkpoint, kind, source)
    vae = single_file_vae(original, checkpoint, kind, source)
    encoders, tokenizers = [], []
    for spec in text_encoder_specs(kind, original):
        try:
            folder = local_folder(spec.params.get("version"), config_dir)
        except FileNotFoundError as error:
            raise FileNotFoundError(f"{source}: {error}") from None
        encoders.append(single_file_text_encoder(checkpoint, spec, folder, source))
        pad = PAD_TOKEN[spec.family]
        tokenizer_folder = tokenizer_dir or (folder if folder and has_tokenizer_files(folder) else None)
        tokenizers.append(clip_tokenizer(tokenizer_folder, pad_token=pad))
        check_vocabulary(tokenizers[-1], encoders[-1].config.vocab_size, f"{source}, {spec.what}")
    return T2IModel(
        kind=kind,
        unet=unet,
        vae=vae,
        text_encoders=encoders,
        tokenizers=tokenizers,
        scheduler_config=single_file_scheduler_config(original, prediction_type),
        name=os.path.splitext(os.path.basename(path))[0],
    )


def yaml_beside(path: str) -> str | None:
    """The WebUI's convention: model.safetensors is described by model.yaml next to it."""
    stem = os.path.splitext(path)[0]
    for candidate in (stem + ".yaml", stem + ".yml"):
        if os.path.isfile(candidate):
            return candidate
    return None


def read_checkpoint(path: str, allow_pickle: bool) -> tuple[dict[str, torch.Tensor], int | None]:
    extension = os.path.splitext(path)[1].lower()
    if extension not in WEIGHT_EXTENSIONS:
        raise ModelError(
            f"{path} is not a model checkpoint: expected a .safetensors file "
            f"(or {', '.join(PICKLE_EXTENSIONS)} with allow_pickle=True), or a diffusers folder"
        )
    loaded = read_state_dict(path, allow_pickle)
    global_step = loaded.get("global_step") if isinstance(loaded.get("global_step"), int) else None
    return normalise_clip_keys(as_float32(unwrap_state_dict(loaded))), global_step


def normalise_clip_keys(checkpoint: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Old SD1 checkpoints (older transformers) lack the "text_model." level in CLIP names."""
    for prefix in (SD1_TEXT_PREFIX, SDXL_TEXT_PREFIXES[0]):
        for key in [k for k in checkpoint if k.startswith(prefix)]:
            rest = key[len(prefix) :]
            if not rest.startswith(("text_model.", "text_projection")):
                checkpoint[prefix + "text_model." + rest] = checkpoint.pop(key)
    return checkpoint


def checkpoint_kind(checkpoint: dict, path: str) -> str:
    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in checkpoint)

    if any(".temopral_conv." in k or k.startswith(UNET_PREFIX + "fps_embedding.") for k in checkpoint):
        raise ModelError(f"{path} is a VideoCrafter2 text-to-video checkpoint, not an image model; give it as the T2V model")
    if not has(UNET_PREFIX):
        raise ValueError(
            f"{path}: its keys match no known architecture (SD1.x, SD2.x, SDXL base in the original "
            f"naming need '{UNET_PREFIX}…' UNet weights); is it a LoRA, a VAE or a diffusers-named file?"
        )
    if has(SDXL_TEXT_PREFIXES[1]):
        kind = "sdxl"
    elif has("conditioner.embedders.0.model."):
        raise ValueError(f"{path}: an SDXL refiner checkpoint; only SDXL base models are supported")
    elif has(SD2_TEXT_PREFIX):
        kind = "sd2"
    elif has(SD1_TEXT_PREFIX):
        kind = "sd1"
    else:
        raise ValueError(f"{path}: UNet weights without a known text encoder (CLIP or OpenCLIP); not a full checkpoint")
    if not has(VAE_PREFIX):
        raise ValueError(f"{path}: the checkpoint holds no VAE ('{VAE_PREFIX}…' weights)")
    in_channels = checkpoint[UNET_PREFIX + "input_blocks.0.0.weight"].shape[1]
    if in_channels != 4:
        raise ValueError(f"{path}: UNet takes {in_channels} input channels (inpainting/edit model); not supported")
    return kind


def read_original_config(yaml_path: str) -> dict:
    import yaml

    if not os.path.isfile(yaml_path):
        raise FileNotFoundError(f"model config not found: {yaml_path}")
    with open(yaml_path, encoding="utf-8") as f:
        config = yaml.safe_load(f)
    model = config.get("model") if isinstance(config, dict) else None
    params = (model or {}).get("params") or {}
    if not (params.get("unet_config") or params.get("network_config")) or not params.get("first_stage_config"):
        raise ValueError(
            f"{yaml_path} is not an ldm/sgm model config: model.params needs unet_config (or network_config) "
            "and first_stage_config"
        )
    return config


def original_params(original: dict) -> dict:
    return original["model"]["params"]


def original_prediction_type(original: dict, kind: str, global_step: int | None, has_yaml: bool) -> str:
    params = original_params(original)
    if has_yaml:
        scaling = ((params.get("denoiser_config") or {}).get("params") or {}).get("scaling_config") or {}
        is_v = params.get("parameterization") == "v" or str(scaling.get("target", "")).endswith("VScaling")
        return "v_prediction" if is_v else "epsilon"
    if kind == "sd2":
        # Without a config the usual guess: SD2.x checkpoints are 768-v, except the 512 base (its step count).
        return "epsilon" if global_step == SD2_BASE_GLOBAL_STEP else "v_prediction"
    return "epsilon"


def single_file_scheduler_config(original: dict, prediction_type: str) -> dict:
    params = original_params(original)
    config = dict(STANDARD_SCHEDULER, prediction_type=prediction_type)
    # ldm configs spell out the (scaled-linear) training betas; keep them when present.
    for ldm_key, key in (
        ("linear_start", "beta_start"),
        ("linear_end", "beta_end"),
        ("timesteps", "num_train_timesteps"),
    ):
        if params.get(ldm_key) is not None:
            config[key] = type(STANDARD_SCHEDULER[key])(params[ldm_key])
    return config


def size_embedding_dim(original: dict) -> int:
    """SDXL embeds each size/crop number with this many sin/cos features (sgm ConcatTimestepEmbedderND)."""
    for model in original_params(original).get("conditioner_config", {}).get("params", {}).get("emb_models", []):
        if str(model.get("target", "")).endswith("ConcatTimestepEmbedderND"):
            return int((model.get("params") or {}).get("outdim", 256))
    return 256


def single_file_unet(original: dict, checkpoint: dict, kind: str, source: str):
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, create_unet_diffusers_config_from_ldm

    config = create_unet_diffusers_config_from_ldm(original, checkpoint)
    if kind == "sdxl":
        # diffusers recognises SDXL's size/text conditioning only by the real widths; say it outright.
        config.update(addition_embed_type="text_time", class_embed_type=None)
        config["addition_time_embed_dim"] = size_embedding_dim(original)
    if kind == "sd2":
        config["upcast_attention"] = True  # SD2.x attention overflows in float16 otherwise
    latent_size = original_params(original).get("image_size")
    config["sample_size"] = latent_size if isinstance(latent_size, int) else DEFAULT_LATENT_SIZE[kind]
    weights = convert_ldm_unet_checkpoint(checkpoint, config)
    return build_with_weights(lambda: UNet2DConditionModel(**config), weights, "UNet", source)


def single_file_vae(original: dict, checkpoint: dict, kind: str, source: str):
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint, create_vae_diffusers_config_from_ldm

    config = create_vae_diffusers_config_from_ldm(original, checkpoint)
    weights = convert_ldm_vae_checkpoint(checkpoint, config)
    return build_with_weights(lambda: AutoencoderKL(**config), weights, "VAE", source)


# ---------------------------------------------------------------------------------- text encoders
@dataclass
class TextEncoderSpec:
    """Where a text encoder sits in an original checkpoint and how the model uses it."""

    family: str  # "clip" (OpenAI CLIP, transformers naming) or "open_clip" (open_clip naming)
    prefix: str  # key prefix in the checkpoint
    projection: bool  # a CLIPTextModelWithProjection (SDXL's second encoder gives the pooled embedding)
    drop_last: bool  # conditioning reads the penultimate layer, so the diffusers tower stops there
    params: dict  # the encoder's yaml params (may name a local folder as `version`)
    what: str  # for messages


def text_encoder_specs(kind: str, original: dict) -> list[TextEncoderSpec]:
    params = original_params(original)
    if kind == "sdxl":
        models = params.get("conditioner_config", {}).get("params", {}).get("emb_models", [])
        text_models = [m for m in models if "CLIP" in str(m.get("target", ""))]
        yaml_params = [(m.get("params") or {}) for m in text_models] if len(text_models) == 2 else [{}, {}]
        return [
            TextEncoderSpec("clip", SDXL_TEXT_PREFIXES[0], False, False, yaml_params[0], "text encoder 1 (CLIP)"),
            TextEncoderSpec(
                "open_clip", SDXL_TEXT_PREFIXES[1], True, False, yaml_params[1], "text encoder 2 (OpenCLIP)"
            ),
        ]
    yaml_params = (params.get("cond_stage_config") or {}).get("params") or {}
    if kind == "sd2":
        # SD2 conditions on the penultimate OpenCLIP layer (then ln_final): a tower one layer shorter.
        penultimate = yaml_params.get("layer", "last") == "penultimate"
        return [
            TextEncoderSpec("open_clip", SD2_TEXT_PREFIX, False, penultimate, yaml_params, "text encoder (OpenCLIP)")
        ]
    return [TextEncoderSpec("clip", SD1_TEXT_PREFIX, False, False, yaml_params, "text encoder (CLIP)")]


def local_folder(version, config_dir: str | None) -> str | None:
    """The text-encoder folder a yaml names (`params.version`), when it is a local folder with a
    config.json (the WebUI's tiny models do this); hub names and open_clip tags are not. A relative
    name is tried beside the yaml; a missing absolute path is an error (guessing sizes would be wrong)."""
    if not isinstance(version, str) or not version:
        return None
    if os.path.isabs(version):
        if not os.path.isfile(os.path.join(version, "config.json")):
            raise FileNotFoundError(f"the model config names text-encoder folder {version}, which has no config.json")
        return version
    if config_dir and os.path.isfile(os.path.join(config_dir, version, "config.json")):
        return os.path.join(config_dir, version)
    return None


def has_tokenizer_files(folder: str) -> bool:
    return all(os.path.exists(os.path.join(folder, f)) for f in ("vocab.json", "merges.txt"))


def count_layers(checkpoint: dict, layers_prefix: str) -> int:
    indexes = {k[len(layers_prefix) :].split(".")[0] for k in checkpoint if k.startswith(layers_prefix)}
    return len(indexes)


def text_config_from_checkpoint(checkpoint: dict, spec: TextEncoderSpec, folder: str | None, source: str):
    """A CLIPTextConfig whose sizes are read off the checkpoint's tensors. What shapes cannot tell (heads,
    activation) comes from the yaml-named folder's config.json, else from the standard towers."""
    from transformers import CLIPTextConfig

    prefix = spec.prefix
    if spec.family == "clip":
        names = {
            "tokens": "text_model.embeddings.token_embedding.weight",
            "positions": "text_model.embeddings.position_embedding.weight",
            "layers": "text_model.encoder.layers.",
            "fc1": "text_model.encoder.layers.0.mlp.fc1.weight",
        }
    else:
        names = {
            "tokens": "token_embedding.weight",
            "positions": "positional_embedding",
            "layers": "transformer.resblocks.",
            "fc1": "transformer.resblocks.0.mlp.c_fc.weight",
        }
    missing = [prefix + n for n in (names["tokens"], names["positions"], names["fc1"]) if prefix + n not in checkpoint]
    if missing:
        raise ValueError(f"{source}: the {spec.what} is incomplete; missing {', '.join(missing)}")
    vocab_size, hidden_size = checkpoint[prefix + names["tokens"]].shape
    layers = count_layers(checkpoint, prefix + names["layers"]) - (1 if spec.drop_last else 0)
    values = {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": checkpoint[prefix + names["fc1"]].shape[0],
        "num_hidden_layers": layers,
        "max_position_embeddings": checkpoint[prefix + names["positions"]].shape[0],
        "projection_dim": projection_dim(checkpoint, spec, hidden_size),
    }
    base = {
        "hidden_act": TEXT_ACTIVATION[spec.family],
        "num_attention_heads": max(1, hidden_size // TEXT_HEAD_DIM),
        "layer_norm_eps": 1e-5,
        "bos_token_id": 0,
        "pad_token_id": 1,
        "eos_token_id": 2,
    }
    if folder:
        saved = CLIPTextConfig.from_pretrained(folder, local_files_only=True).to_dict()
        base.update({k: saved[k] for k in ("hidden_act", "num_attention_heads", "layer_norm_eps") if k in saved})
    return CLIPTextConfig(**base, **values)


def projection_dim(checkpoint: dict, spec: TextEncoderSpec, hidden_size: int) -> int:
    if spec.family == "clip":
        projection = checkpoint.get(spec.prefix + "text_projection.weight")
        return projection.shape[0] if projection is not None else hidden_size
    projection = checkpoint.get(spec.prefix + "text_projection")  # open_clip stores (width, embed_dim)
    return projection.shape[1] if projection is not None else hidden_size


def single_file_text_encoder(checkpoint: dict, spec: TextEncoderSpec, folder: str | None, source: str):
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint

    config = text_config_from_checkpoint(checkpoint, spec, folder, source)
    if spec.family == "clip":
        weights = convert_ldm_clip_checkpoint(checkpoint, remove_prefix=spec.prefix)
        weights = {k: v for k, v in weights.items() if k.startswith(("text_model.", "text_projection"))}
    else:
        weights = convert_open_clip_checkpoint(SimpleNamespace(config=config), checkpoint, prefix=spec.prefix)
    if not spec.projection:
        weights.pop("text_projection.weight", None)  # SD1/SD2 never use the projection
    # SD2's dropped last layer has no place in the diffusers model.
    weights = {k: v for k, v in weights.items() if encoder_layer_index(k) < config.num_hidden_layers}
    return build_text_encoder(config, weights, spec.projection, spec.what, source)


def encoder_layer_index(key: str) -> int:
    """Index of the transformer layer a diffusers text-encoder key belongs to (-1 for other keys)."""
    layers = "text_model.encoder.layers."
    return int(key[len(layers) :].split(".")[0]) if key.startswith(layers) else -1
