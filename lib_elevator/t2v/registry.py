"""Which T2V model a path holds, loading it, and listing the usable ones.

Recognised:
- "zeroscope": a diffusers text-to-video folder (model_index.json, unet/ = UNet3DConditionModel);
- "animatediff": an AnimateDiff motion-module file (.safetensors, or a pickled .ckpt) or a
  diffusers MotionAdapter folder;
- "animatelcm": an AnimateLCM MotionAdapter folder (it holds the LCM LoRA), or an AnimateLCM
  motion-module file with its LCM LoRA next to it;
- "videocrafter2": a VideoCrafter2 checkpoint file (the published model.ckpt, or its converted
  .safetensors), or a folder holding one (see `t2v.videocrafter.folder_weights`);
- "lavie": a LaVie base weights file (the published lavie_base.pt, or its converted .safetensors), or a
  folder holding one (see `t2v.lavie.folder_weights`).
AnimateDiff kinds need a SD1.5 base model to plug into; LaVie takes a SD1.x model's text encoder and VAE.

Detection raises `NotT2VModel` for things that are not T2V models at all (a LoRA, a text file), and
a plain `ModelError` for T2V models that cannot run here (a PIA motion module, a pickle without
the opt-in, an AnimateLCM module without its LoRA): listings skip the first and show the second
with its reason. Reading files goes through `lib_elevator.weights`.
"""

from __future__ import annotations

import os

import torch

from lib_elevator.errors import ModelError, UserError, as_model_error
from lib_elevator.t2v import lavie, videocrafter
from lib_elevator.t2v.animatediff import ANIMATELCM_LORA_NAME, AnimateDiffBackend, find_lcm_lora, motion_module_problem
from lib_elevator.t2v.zeroscope import ZeroScopeBackend
from lib_elevator.weights import WEIGHT_EXTENSIONS, is_pickle, pickle_refused, read_json, tensor_names

NEEDS_BASE = ("animatediff", "animatelcm", lavie.KIND)
# The original ModelScope release, as the sd-webui-text2video extension reads it.
MODELSCOPE_ORIGINAL_FILES = ("text2video_pytorch_model.pth", "VQGAN_autoencoder.pth", "open_clip_pytorch_model.bin")


class NotT2VModel(ModelError):
    """The path holds something else than a T2V model."""


# ---------------------------------------------------------------------------------- detection


def detect_t2v_kind(path: str, allow_pickle: bool = False) -> str:
    """ "zeroscope", "animatediff", "animatelcm", "videocrafter2" or "lavie"; otherwise a ModelError naming the path and what is
    wrong (NotT2VModel when it is no T2V model at all)."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.exists(path):
        raise ModelError(f"T2V model {path} does not exist")
    if os.path.isdir(path):
        return _folder_kind(path, allow_pickle)
    return _file_kind(path, allow_pickle)


def _folder_kind(path: str, allow_pickle: bool = False) -> str:
    entries = sorted(os.listdir(path))
    if not entries:
        raise NotT2VModel(f"{path} is not a T2V model: the folder is empty")
    if any(name in entries for name in MODELSCOPE_ORIGINAL_FILES):
        raise ModelError(
            f"{path} holds a text-to-video model in the original ModelScope format (text2video_pytorch_model.pth, "
            "VQGAN_autoencoder.pth, open_clip_pytorch_model.bin, configuration.json), as the sd-webui-text2video "
            "extension uses it. VideoElevator reads the diffusers layout (model_index.json, unet/, text_encoder/, "
            "tokenizer/, scheduler/, vae/): convert the model to it, or get its diffusers version "
            "(e.g. the top level of cerspense/zeroscope_v2_576w, or damo-vilab/text-to-video-ms-1.7b)"
        )
    if "model_index.json" in entries:
        pipeline = read_json(os.path.join(path, "model_index.json")).get("_class_name", "unknown")
        unet_config = os.path.join(path, "unet", "config.json")
        unet_class = read_json(unet_config).get("_class_name") if os.path.isfile(unet_config) else None
        if unet_class == "UNet3DConditionModel":
            return "zeroscope"
        raise NotT2VModel(
            f"{path} is not a T2V model: it is a diffusers {pipeline} folder whose unet/ is "
            f"{unet_class or 'missing'}, not a UNet3DConditionModel"
        )
    if "config.json" in entries:
        config_class = read_json(os.path.join(path, "config.json")).get("_class_name")
        if config_class != "MotionAdapter":
            kind = _single_file_folder_kind(path, allow_pickle)  # a LaVie folder's UNet config.json
            if kind:
                return kind
            raise NotT2VModel(
                f"{path} is not a T2V model: its config.json describes a {config_class}, not a MotionAdapter"
            )
        if not any(e.startswith("diffusion_pytorch_model.") for e in entries):
            raise ModelError(
                f"{path} has a MotionAdapter config.json but no weights (diffusion_pytorch_model.safetensors)"
            )
        return _motion_kind(path)
    kind = _single_file_folder_kind(path, allow_pickle)
    if kind:
        return kind
    raise NotT2VModel(
        f"{path} is not a T2V model: no model_index.json with a UNet3DConditionModel unet/ (ZeroScope/ModelScope), "
        f"no MotionAdapter config.json (AnimateDiff/AnimateLCM), no VideoCrafter2 or LaVie checkpoint, not a motion-module file "
        f"(found {', '.join(entries[:6])}{', ...' if len(entries) > 6 else ''})"
    )


def _file_kind(path: str, allow_pickle: bool) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext not in WEIGHT_EXTENSIONS:
        raise NotT2VModel(
            f"{path} is not a T2V model: unsupported file type {ext or '(none)'!r}; a motion module is a "
            ".safetensors or .ckpt file, and ZeroScope/ModelScope/AnimateLCM models are folders"
        )
    names = tensor_names(path, allow_pickle)
    if names is None:  # a pickle whose names cannot be read without unpickling it
        raise pickle_refused(path)
    kind = _single_file_kind(path, names, allow_pickle)
    if kind:
        return kind
    if not any(".motion_modules." in name for name in names):
        hint = ""
        if any(name.startswith("lora_") or ".lora_" in name or ".lora." in name for name in names):
            hint = " (it looks like a LoRA)"
        elif any(name.startswith(("model.diffusion_model.", "conditioner.", "cond_stage_model.")) for name in names):
            hint = " (it looks like an image-model checkpoint)"
        raise NotT2VModel(f"{path} is not a T2V model: not a motion-module file, no motion_modules weights{hint}")
    problem = motion_module_problem(names)
    if problem:
        raise ModelError(f"{path}: {problem}")
    if is_pickle(path) and not allow_pickle:
        raise pickle_refused(path)
    return _motion_kind(path)


# Models published as one whole checkpoint file. Each detector takes (path, tensor names, allow_pickle) and
# returns its kind, None when the file is not of that model, or raises a ModelError when it is but cannot run.
SINGLE_FILE_DETECTORS = (videocrafter.file_kind, lavie.file_kind)
# Each takes (folder, allow_pickle) and returns its kind, None, or raises a ModelError, likewise.
SINGLE_FILE_FOLDER_DETECTORS = (videocrafter.folder_kind, lavie.folder_kind)


def _single_file_kind(path: str, names: list[str], allow_pickle: bool) -> str | None:
    for detect in SINGLE_FILE_DETECTORS:
        kind = detect(path, names, allow_pickle)
        if kind:
            return kind
    return None


def _single_file_folder_kind(path: str, allow_pickle: bool) -> str | None:
    for detect in SINGLE_FILE_FOLDER_DETECTORS:
        kind = detect(path, allow_pickle)
        if kind:
            return kind
    return None


def _motion_kind(path: str) -> str:
    if find_lcm_lora(path):
        return "animatelcm"
    if "animatelcm" in os.path.basename(path).lower():
        raise ModelError(
            f"{path} is an AnimateLCM motion module without its LCM LoRA: put {ANIMATELCM_LORA_NAME} "
            + ("in the folder" if os.path.isdir(path) else "next to it")
        )
    return "animatediff"


# ---------------------------------------------------------------------------------- loading, listing


def load_t2v(path: str, *, base=None, device="cpu", dtype: torch.dtype = torch.float32, allow_pickle: bool = False):
    """Load the T2V model at `path`. AnimateDiff/AnimateLCM and LaVie need `base`: the SD1.x model (a
    loaded T2IModel of kind "sd1", or a path for `loaders.load_t2i`). Every problem with the files is a
    ModelError."""
    path = os.path.abspath(os.fspath(path))
    kind = detect_t2v_kind(path, allow_pickle)
    try:
        if kind == "zeroscope":
            return ZeroScopeBackend.load(path, device=device, dtype=dtype, allow_pickle=allow_pickle)
        if kind == videocrafter.KIND:
            return videocrafter.VideoCrafter2Backend.load(path, device=device, dtype=dtype, allow_pickle=allow_pickle)
        if kind == lavie.KIND:
            return lavie.LaVieBackend.load(path, base, device=device, dtype=dtype, allow_pickle=allow_pickle)
        return AnimateDiffBackend.load(path, base, device=device, dtype=dtype, allow_pickle=allow_pickle)
    except UserError:
        raise
    except (ValueError, OSError) as error:  # what diffusers/transformers/safetensors raise on bad files
        raise as_model_error(error) from error


def list_t2v_models(folders, allow_pickle: bool = False, include_unusable: bool = False) -> list[dict]:
    """T2V models directly inside `folders` (one level: a folder per model or a motion-module file),
    as {"name", "path", "kind"} sorted by name; a folder that is itself a model is listed alone.
    Things that are not T2V models are skipped. T2V models that cannot run are skipped too, or with
    `include_unusable` listed with "kind": None and "error": the reason."""
    found: dict[str, dict] = {}
    for folder in folders:
        folder = os.path.abspath(os.fspath(folder))
        if not os.path.isdir(folder):
            continue
        own = _entry(folder, os.path.basename(folder), allow_pickle)
        if own is not None and own["kind"] is not None:
            found.setdefault(folder, own)
            continue
        for name in sorted(os.listdir(folder)):
            if name.startswith("."):
                continue
            entry = _entry(os.path.join(folder, name), name, allow_pickle)
            if entry is not None:
                found.setdefault(entry["path"], entry)
    models = [m for m in found.values() if m["kind"] is not None or include_unusable]
    return sorted(models, key=lambda model: (model["name"].lower(), model["path"]))


def _entry(path: str, name: str, allow_pickle: bool) -> dict | None:
    try:
        return {"name": name, "path": path, "kind": detect_t2v_kind(path, allow_pickle)}
    except NotT2VModel:
        return None
    except ModelError as error:
        return {"name": name, "path": path, "kind": None, "error": str(error)}
    except OSError:
        return None
