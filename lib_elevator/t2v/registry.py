"""Which T2V model a path holds, loading it, listing the usable ones, and reading weights safely.

Recognised:
- "zeroscope": a diffusers text-to-video folder (model_index.json, unet/ = UNet3DConditionModel);
- "animatediff": an AnimateDiff motion-module file (.safetensors, or a pickled .ckpt) or a
  diffusers MotionAdapter folder;
- "animatelcm": an AnimateLCM MotionAdapter folder (it holds the LCM LoRA), or an AnimateLCM
  motion-module file with its LCM LoRA next to it.
AnimateDiff kinds need a SD1.5 base model to plug into.

Pickled weights (.ckpt/.pt/.pth/.bin) are read only when the caller opts in, and then with
torch's restricted weights-only unpickler. Recognising a pickled motion module does not unpickle
it: the key names are read from the pickle's opcodes without executing them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickletools
import zipfile

import torch

T2V_KINDS = ("zeroscope", "animatediff", "animatelcm")
PICKLE_EXTENSIONS = (".ckpt", ".pt", ".pth", ".bin")
WEIGHT_EXTENSIONS = (".safetensors", *PICKLE_EXTENSIONS)
# The original ModelScope release, as the sd-webui-text2video extension reads it.
MODELSCOPE_ORIGINAL_FILES = ("text2video_pytorch_model.pth", "VQGAN_autoencoder.pth", "open_clip_pytorch_model.bin")


class PickleRefusedError(ValueError):
    """A pickled weights file was met without the caller's opt-in."""


def pickle_refused(path: str) -> PickleRefusedError:
    return PickleRefusedError(
        f"{path} holds pickled weights, and unpickling can run code. Convert it to .safetensors, or opt in to "
        "pickled T2V weights (allow_pickle=True; they are then read with torch's restricted weights-only loader)"
    )


# ---------------------------------------------------------------------------------- reading weights


def load_weights_file(path: str, allow_pickle: bool = False) -> dict:
    """A state dict from a .safetensors file, or from a pickled file when `allow_pickle`."""
    ext = os.path.splitext(path)[1].lower()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {path} does not exist")
    if ext == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as error:
            raise ValueError(f"{path} is not a readable safetensors file: {error}") from None
    if ext in PICKLE_EXTENSIONS:
        if not allow_pickle:
            raise pickle_refused(path)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ValueError(f"{path} could not be read by the restricted (weights-only) loader: {error}") from None
        if not isinstance(state, dict):
            raise ValueError(f"{path} does not hold a state dict (found a {type(state).__name__})")
        return state
    raise ValueError(f"{path}: unsupported weights file type {ext!r} (expected {', '.join(WEIGHT_EXTENSIONS)})")


def diffusers_weights_kwargs(folder: str, allow_pickle: bool = False, stem: str = "diffusion_pytorch_model") -> dict:
    """from_pretrained arguments for a diffusers model folder: safetensors when there are any
    (full precision first, then the fp16 variant), pickled .bin only with the opt-in."""
    files = set(os.listdir(folder)) if os.path.isdir(folder) else set()
    for ext, safe in ((".safetensors", True), (".bin", False)):
        for variant in (None, "fp16"):
            name = stem + (f".{variant}" if variant else "") + ext
            if name in files or f"{name}.index.json" in files:
                if not safe and not allow_pickle:
                    raise pickle_refused(os.path.join(folder, name))
                kwargs = {"use_safetensors": safe, "variant": variant, "local_files_only": True}
                if importlib.util.find_spec("accelerate") is None:
                    kwargs["low_cpu_mem_usage"] = False  # what diffusers falls back to anyway, minus its warning
                return kwargs
    raise FileNotFoundError(f"{folder} has no model weights ({stem}.safetensors)")


def load_clip_text_encoder(folder: str, dtype: torch.dtype = torch.float32, allow_pickle: bool = False):
    """A transformers CLIPTextModel from a diffusers text_encoder/ folder.

    A pickled pytorch_model.bin is unpickled here with weights_only=True and handed over as a
    state dict, so the restricted loader is used whatever transformers' own default is."""
    from transformers import CLIPTextModel

    files = set(os.listdir(folder)) if os.path.isdir(folder) else set()
    for variant in (None, "fp16"):
        name = "model" + (f".{variant}" if variant else "") + ".safetensors"
        if name in files or f"{name}.index.json" in files:
            return CLIPTextModel.from_pretrained(
                folder, local_files_only=True, use_safetensors=True, variant=variant, torch_dtype=dtype
            ).eval()
    for variant in (None, "fp16"):
        name = "pytorch_model" + (f".{variant}" if variant else "") + ".bin"
        if name in files:
            state = load_weights_file(os.path.join(folder, name), allow_pickle)
            return CLIPTextModel.from_pretrained(
                folder, local_files_only=True, variant=variant, state_dict=state, torch_dtype=dtype
            ).eval()
    raise FileNotFoundError(f"{folder} has no text-encoder weights (model.safetensors)")


def weight_names(path: str) -> list[str] | None:
    """Tensor names in a weights file without loading tensors: the safetensors header, or the
    strings of a torch zip checkpoint's pickle read opcode by opcode (nothing is executed).
    None when a pickled file is not in torch's zip format (its names cannot be read safely)."""
    if path.lower().endswith(".safetensors"):
        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt") as f:
                return list(f.keys())
        except Exception as error:
            raise ValueError(f"{path} is not a readable safetensors file: {error}") from None
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as archive:
        pickled = next((n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")), None)
        if pickled is None:
            return None
        data = archive.read(pickled)
    try:
        return [arg for _, arg, _ in pickletools.genops(data) if isinstance(arg, str)]
    except Exception:
        return None


# ---------------------------------------------------------------------------------- detection


def detect_t2v_kind(path: str, allow_pickle: bool = False) -> str:
    """ "zeroscope", "animatediff" or "animatelcm"; otherwise an error naming the path and what is
    missing."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.exists(path):
        raise FileNotFoundError(f"T2V model {path} does not exist")
    if os.path.isdir(path):
        return _folder_kind(path)
    return _file_kind(path, allow_pickle)


def _folder_kind(path: str) -> str:
    from lib_elevator.t2v.animatediff import find_lcm_lora

    entries = sorted(os.listdir(path))
    if not entries:
        raise ValueError(f"{path} is not a T2V model: the folder is empty")
    if any(name in entries for name in MODELSCOPE_ORIGINAL_FILES):
        raise ValueError(
            f"{path} holds a text-to-video model in the original ModelScope format (text2video_pytorch_model.pth, "
            "VQGAN_autoencoder.pth, open_clip_pytorch_model.bin, configuration.json), as the sd-webui-text2video "
            "extension uses it. VideoElevator reads the diffusers layout (model_index.json, unet/, text_encoder/, "
            "tokenizer/, scheduler/, vae/): convert the model to it, or get its diffusers version "
            "(e.g. the top level of cerspense/zeroscope_v2_576w, or damo-vilab/text-to-video-ms-1.7b)"
        )
    if "model_index.json" in entries:
        pipeline = _read_json(os.path.join(path, "model_index.json")).get("_class_name", "unknown")
        unet_config = os.path.join(path, "unet", "config.json")
        unet_class = _read_json(unet_config).get("_class_name") if os.path.isfile(unet_config) else None
        if unet_class == "UNet3DConditionModel":
            return "zeroscope"
        raise ValueError(
            f"{path} is not a T2V model: it is a diffusers {pipeline} folder whose unet/ is "
            f"{unet_class or 'missing'}, not a UNet3DConditionModel"
        )
    if "config.json" in entries:
        config_class = _read_json(os.path.join(path, "config.json")).get("_class_name")
        if config_class != "MotionAdapter":
            raise ValueError(
                f"{path} is not a T2V model: its config.json describes a {config_class}, not a MotionAdapter"
            )
        if not any(e.startswith("diffusion_pytorch_model.") for e in entries):
            raise FileNotFoundError(
                f"{path} has a MotionAdapter config.json but no weights (diffusion_pytorch_model.safetensors)"
            )
        if find_lcm_lora(path):
            return "animatelcm"
        _require_lcm_lora_if_named(path)
        return "animatediff"
    raise ValueError(
        f"{path} is not a T2V model: no model_index.json with a UNet3DConditionModel unet/ (ZeroScope/ModelScope), "
        f"no MotionAdapter config.json (AnimateDiff/AnimateLCM), not a motion-module file "
        f"(found {', '.join(entries[:6])}{', ...' if len(entries) > 6 else ''})"
    )


def _file_kind(path: str, allow_pickle: bool) -> str:
    from lib_elevator.t2v.animatediff import find_lcm_lora

    ext = os.path.splitext(path)[1].lower()
    if ext not in WEIGHT_EXTENSIONS:
        raise ValueError(
            f"{path} is not a T2V model: unsupported file type {ext or '(none)'!r}; a motion module is a "
            ".safetensors or .ckpt file, and ZeroScope/ModelScope/AnimateLCM models are folders"
        )
    names = weight_names(path)
    if names is None:
        if not allow_pickle:
            raise pickle_refused(path)
        names = list(load_weights_file(path, allow_pickle=True))
    if not any(".motion_modules." in name for name in names):
        hint = ""
        if any(name.startswith("lora_") or ".lora_" in name or ".lora." in name for name in names):
            hint = " (it looks like a LoRA)"
        elif any(name.startswith(("model.diffusion_model.", "conditioner.", "cond_stage_model.")) for name in names):
            hint = " (it looks like an image-model checkpoint)"
        raise ValueError(f"{path} is not a T2V model: not a motion-module file, no motion_modules weights{hint}")
    if find_lcm_lora(path):
        return "animatelcm"
    _require_lcm_lora_if_named(path)
    return "animatediff"


def _require_lcm_lora_if_named(path: str) -> None:
    from lib_elevator.t2v.animatediff import ANIMATELCM_LORA_NAME

    if "animatelcm" in os.path.basename(path).lower():
        raise FileNotFoundError(
            f"{path} is an AnimateLCM motion module without its LCM LoRA: put {ANIMATELCM_LORA_NAME} "
            + ("in the folder" if os.path.isdir(path) else "next to it")
        )


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} is not readable JSON: {error}") from None
    return data if isinstance(data, dict) else {}


# ---------------------------------------------------------------------------------- loading, listing


def load_t2v(path: str, *, base=None, device="cpu", dtype: torch.dtype = torch.float32, allow_pickle: bool = False):
    """Load the T2V model at `path`. AnimateDiff/AnimateLCM need `base`: the SD1.5 model (a loaded
    T2IModel of kind "sd1", or a path for `loaders.load_t2i`)."""
    path = os.path.abspath(os.fspath(path))
    kind = detect_t2v_kind(path, allow_pickle)
    if kind == "zeroscope":
        from lib_elevator.t2v.zeroscope import ZeroScopeBackend

        return ZeroScopeBackend.load(path, device=device, dtype=dtype, allow_pickle=allow_pickle)
    if base is None:
        label = "AnimateLCM" if kind == "animatelcm" else "AnimateDiff"
        raise ValueError(
            f"{path} is an {label} motion module: it needs a SD1.5 base model to plug into (pass base=, "
            "or select a SD1.5 checkpoint)"
        )
    from lib_elevator.t2v.animatediff import AnimateDiffBackend

    return AnimateDiffBackend.load(path, base, device=device, dtype=dtype, allow_pickle=allow_pickle)


def list_t2v_models(folders) -> list[dict]:
    """Usable T2V models directly inside `folders` (one level: a folder per model or a motion-module
    file), as {"name", "path", "kind"} sorted by name. A folder that is itself a model is listed
    alone. Entries that are not models are skipped."""
    found: dict[str, dict] = {}
    for folder in folders:
        folder = os.path.abspath(os.fspath(folder))
        if not os.path.isdir(folder):
            continue
        own = _kind_or_none(folder)
        if own is not None:
            found.setdefault(folder, {"name": os.path.basename(folder), "path": folder, "kind": own})
            continue
        for entry in sorted(os.listdir(folder)):
            if entry.startswith("."):
                continue
            path = os.path.join(folder, entry)
            kind = _kind_or_none(path)
            if kind is not None:
                found.setdefault(path, {"name": entry, "path": path, "kind": kind})
    return sorted(found.values(), key=lambda model: (model["name"].lower(), model["path"]))


def _kind_or_none(path: str) -> str | None:
    try:
        return detect_t2v_kind(path)
    except (OSError, ValueError):
        return None
