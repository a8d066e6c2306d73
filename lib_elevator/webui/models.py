"""T2V models inside the WebUI: where they are looked for, resolving a name, and the loaded-model
cache (a model is loaded once and kept, on the GPU or offloaded to the CPU by policy)."""

from __future__ import annotations

import os
import threading

from modules import devices, paths, shared

from lib_elevator.errors import SettingsError
from lib_elevator.t2v.registry import NEEDS_BASE, list_t2v_models, load_t2v

OFFLOAD_POLICIES = ("auto", "always", "never")
_cache: dict[tuple, object] = {}  # one loaded T2V backend at a time: they are large
_lock = threading.Lock()


def main_folder() -> str:
    configured = shared.opts.data.get("videoelevator_model_dir", "") or getattr(
        shared.cmd_opts, "videoelevator_models_dir", None
    )
    return configured or os.path.join(paths.models_path, "VideoElevator")


def model_folders() -> list[tuple[str, str]]:
    """(label, folder): ours first, then where other extensions keep models users already have."""
    models = paths.models_path
    candidates = [
        ("VideoElevator", main_folder()),
        ("text2video", os.path.join(models, "text2video")),
        ("AnimateDiff", os.path.join(models, "AnimateDiff")),
        ("AnimateDiff", os.path.join(paths.extensions_dir, "sd-webui-animatediff", "model")),
    ]
    return [(label, folder) for label, folder in candidates if os.path.isdir(folder)]


def list_models(include_unusable: bool = False) -> list[dict]:
    """T2V models with unique display names: {"name", "path", "kind", "folder"}; with
    `include_unusable` also the T2V models that cannot run here, with "kind": None and "error"."""
    models, seen = [], set()
    for label, folder in model_folders():
        for model in list_t2v_models([folder], allow_pickle=pickles_allowed(), include_unusable=include_unusable):
            name, n = model["name"], 1
            while name in seen:  # the same name in several folders: label it, then number it
                n += 1
                name = f"{label}/{model['name']}" + (f" ({n - 1})" if n > 2 else "")
            seen.add(name)
            models.append({**model, "name": name, "folder": label})
    return models


def model_names() -> list[str]:
    return [model["name"] for model in list_models()]


def resolve(name: str) -> dict:
    """The model entry called `name`. Only names of models found in the model folders resolve, so an
    API caller cannot point the extension at arbitrary paths."""
    if not name:
        raise SettingsError("t2v_model", f"choose a T2V model; put one in {main_folder()}")
    for model in list_models():
        if model["name"] == name:
            return model
    for model in list_models(include_unusable=True):
        if model["name"] == name:
            raise SettingsError("t2v_model", f"{name} cannot be used: {model['error']}")
    available = ", ".join(model_names()) or f"none (put models in {main_folder()})"
    raise SettingsError("t2v_model", f"no T2V model named {name!r}; available: {available}")


def pickles_allowed() -> bool:
    """Settings > VideoElevator: pickled T2V weights are read (weights-only) only when the user opts in."""
    return bool(shared.opts.data.get("videoelevator_allow_pickle", False))


def offload_wanted() -> bool:
    policy = shared.opts.data.get("videoelevator_offload", "auto")
    if policy == "always":
        return True
    if policy == "never":
        return False
    from lib_elevator.webui import hosts

    return hosts.current().offload_by_default()  # A1111: --medvram/--lowvram; Forge: always


def host_checkpoint_file() -> str:
    """The loaded checkpoint's file, which AnimateDiff motion modules plug into (SD1.x only)."""
    info = getattr(shared.sd_model, "sd_checkpoint_info", None)
    if info is None or not getattr(shared.sd_model, "is_sd1", False):
        raise SettingsError("t2v_model", "this T2V model (AnimateDiff, AnimateLCM, LaVie) takes its text encoder and VAE "
                                         "from the loaded checkpoint, which must be SD1.x")
    return info.filename


def load_base(checkpoint: str, device):
    """The checkpoint file as diffusers SD1 components, to build a motion UNet from (the host's LoRAs
    are not part of it). The caller keeps only what the backend keeps of it."""
    from lib_elevator.loaders import load_t2i

    yaml = os.path.splitext(checkpoint)[0] + ".yaml"
    return load_t2i(checkpoint, device=device, dtype=devices.dtype, config_file=yaml if os.path.exists(yaml) else None)


def get_t2v(model: dict):
    """The loaded backend for a model entry; loaded on first use and cached, keyed on the model, the
    checkpoint an AnimateDiff module plugs into, and the dtype. An AnimateDiff backend keeps the
    checkpoint's text encoder, tokenizer and VAE, not its UNet (the motion UNet has its own copy)."""
    offload = offload_wanted()
    device = "cpu" if offload else devices.device
    with _lock:
        checkpoint = host_checkpoint_file() if model["kind"] in NEEDS_BASE else None
        key = (model["path"], checkpoint, str(devices.dtype))
        backend = _cache.get(key)
        if backend is None:
            _cache.clear()
            devices.torch_gc()
            base = load_base(checkpoint, device) if checkpoint else None
            backend = load_t2v(model["path"], base=base, device=device, dtype=devices.dtype,
                               allow_pickle=pickles_allowed())
            del base
            _cache[key] = backend
        elif str(backend.device) != str(device):
            backend.to(device)
        chunk = int(shared.opts.data.get("videoelevator_t2v_ff_chunk", 0) or 0)
        if backend.supports_forward_chunking:
            if chunk:
                backend.enable_forward_chunking(chunk)
            else:
                backend.disable_forward_chunking()
    return backend


def unload() -> None:
    with _lock:
        _cache.clear()
    devices.torch_gc()
