"""Reading weights files: the one place that opens them, for the T2I loaders, LoRA and every T2V backend.

- `read_state_dict(path)`: the tensors of a .safetensors file, or of a pickled .ckpt/.pt/.pth/.bin
  when the caller opts in (`allow_pickle`); pickles are then read with torch's restricted
  weights-only unpickler, never a full one; `mmap=True` maps their tensors from the file. A truncated
  file, or a pickle that needs more than tensors, is named as such.
- `tensor_names(path)`: the tensor names without loading the tensors (the safetensors header, or
  the strings of a torch zip pickle read opcode by opcode: nothing is executed).
- `unwrap_state_dict(obj)`: the weights inside the containers training code saves them in
  ({"state_dict": ...}, {"ema": ...}, {"module": ...}).
- `variant_file(folder, stem)` / `folder_weights_kwargs(folder)`: which file of a diffusers or
  transformers model folder holds the weights (the plain one before an .fp16 variant, safetensors
  before a pickled .bin).
Every failure is a `ModelError` naming the file.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickletools
import re
import struct
import zipfile

import torch

from lib_elevator.errors import ModelError

SAFE_EXTENSIONS = (".safetensors",)
PICKLE_EXTENSIONS = (".ckpt", ".pt", ".pth", ".bin")
WEIGHT_EXTENSIONS = SAFE_EXTENSIONS + PICKLE_EXTENSIONS
# Containers training code nests weights in, tried in this order.
CONTAINER_KEYS = ("state_dict", "ema", "module")


class PickleRefusedError(ModelError):
    """A pickled weights file was met without the caller's opt-in."""


def pickle_refused(path: str) -> PickleRefusedError:
    return PickleRefusedError(
        f"{path} holds pickled weights, and unpickling can run code. Convert it to .safetensors, or opt in to "
        "pickled weights (allow_pickle=True / --allow-pickle; they are then read with torch's restricted "
        "weights-only loader)"
    )


def is_pickle(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in PICKLE_EXTENSIONS


def read_state_dict(path: str, allow_pickle: bool = False, mmap: bool = False) -> dict:
    """The top-level object of a weights file (a dict of tensors, or a container of one).
    `mmap`: map a pickle's tensors from the file instead of reading them (torch zip files; a legacy
    pickle is read whole), so a caller keeping a few of a large file's tensors never holds the rest."""
    if not os.path.isfile(path):
        raise ModelError(f"weights file {path} does not exist")
    extension = os.path.splitext(path)[1].lower()
    if extension in SAFE_EXTENSIONS:
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as error:  # safetensors raises its own error types for damaged headers
            raise ModelError(f"{path} is not a readable safetensors file: {_damage(path, error)}{error}") from None
    if extension in PICKLE_EXTENSIONS:
        if not allow_pickle:
            raise pickle_refused(path)
        try:
            # mmap needs torch's zip format; a truncated zip is no zip either and fails below.
            # torch.serialization.load, not torch.load: the WebUI replaces torch.load with its own checker,
            # which refuses every file written by torch >= 2.6 (their zips hold a .format_version entry)
            # and returns None; torch's weights-only unpickler admits no more than that checker does.
            loaded = torch.serialization.load(
                path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path)
            )
        except Exception as error:
            raise ModelError(f"{path} {_pickle_problem(path, error)}") from None
        if not isinstance(loaded, dict):
            raise ModelError(f"{path} does not hold a state dict (found a {type(loaded).__name__})")
        return loaded
    raise ModelError(
        f"{path}: unsupported weights file type {extension or '(none)'!r} (expected {', '.join(WEIGHT_EXTENSIONS)})"
    )


# What torch and safetensors say about a file that ends early (an interrupted download or copy).
_TRUNCATION_SIGNS = ("central directory", "failed reading zip archive", "MetadataIncompleteBuffer",
                     "InvalidHeaderLength", "HeaderTooSmall", "unexpected EOF", "Ran out of input")


def _damage(path: str, error: Exception) -> str:
    """A short diagnosis to put before a reader's own message: truncation, or nothing."""
    text = str(error)
    if isinstance(error, (EOFError, struct.error)) or any(sign in text for sign in _TRUNCATION_SIGNS):
        return f"it is truncated or damaged ({os.path.getsize(path):,} bytes; an incomplete download?): "
    return ""


def _pickle_problem(path: str, error: Exception) -> str:
    """Why torch's weights-only loader refused a pickle, briefly (its own message is a page long)."""
    text = str(error)
    refused = re.search(r"GLOBAL (\S+) was not an allowed global|Unsupported global: GLOBAL (\S+)", text)
    if refused or "Weights only load failed" in text:
        what = f" (it pickles {refused.group(1) or refused.group(2)})" if refused else ""
        return (
            f"holds more than tensors{what}, which the restricted weights-only loader refuses to unpickle: save "
            "its state dict on its own (with code you trust), or use the published weights file"
        )
    damage = _damage(path, error)
    if damage:
        return ("is not readable: " + damage + text.split("\n")[0].split(". ")[0][:200]).rstrip(": ")
    return f"could not be read by the restricted (weights-only) loader: {error}"


def unwrap_state_dict(loaded: dict) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint, out of the container they were saved in; "module." and
    "_forward_module." prefixes of wrapped training modules are removed."""
    for key in CONTAINER_KEYS:
        if isinstance(loaded.get(key), dict):
            loaded = loaded[key]
            break
    out = {}
    for key, value in loaded.items():
        if isinstance(value, torch.Tensor):
            out[key.removeprefix("_forward_module.").removeprefix("module.")] = value
    return out


def as_float32(tensors: dict) -> dict[str, torch.Tensor]:
    """Floating tensors as float32 (merges and conversions run there; the final dtype comes last)."""
    return {k: v.float() if v.is_floating_point() else v for k, v in tensors.items() if isinstance(v, torch.Tensor)}


def tensor_names(path: str, allow_pickle: bool = False) -> list[str] | None:
    """Tensor names in a weights file without loading tensors. A pickled file not in torch's zip format
    has no names readable without unpickling it: with `allow_pickle` it is read (weights-only), else None."""
    names = _tensor_names(path)
    if names is None and allow_pickle and is_pickle(path):
        names = list(unwrap_state_dict(read_state_dict(path, allow_pickle=True, mmap=True)))
    return names


def _tensor_names(path: str) -> list[str] | None:
    if path.lower().endswith(".safetensors"):
        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt") as f:
                return list(f.keys())
        except Exception as error:
            raise ModelError(f"{path} is not a readable safetensors file: {_damage(path, error)}{error}") from None
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


# ---------------------------------------------------------------------------------- model folders


def variant_file(folder: str, stem: str, allow_pickle: bool = False) -> tuple[str, str | None, bool] | None:
    """(file name, variant, is safetensors) of the weights of a model folder, or None when it has
    none: `<stem>.safetensors` before `<stem>.fp16.safetensors`, then the pickled `.bin` forms (which
    need the opt-in). A sharded file counts by its index."""
    files = set(os.listdir(folder)) if os.path.isdir(folder) else set()
    for extension, safe in ((".safetensors", True), (".bin", False)):
        for variant in (None, "fp16"):
            name = stem + (f".{variant}" if variant else "") + extension
            if name in files or f"{name}.index.json" in files:
                if not safe and not allow_pickle:
                    raise pickle_refused(os.path.join(folder, name))
                return name, variant, safe
    return None


def folder_weights_kwargs(folder: str, allow_pickle: bool = False, stem: str = "diffusion_pytorch_model") -> dict:
    """from_pretrained arguments for a diffusers model folder."""
    found = variant_file(folder, stem, allow_pickle)
    if found is None:
        raise ModelError(f"{folder} has no model weights ({stem}.safetensors)")
    _, variant, safe = found
    kwargs = {"use_safetensors": safe, "variant": variant, "local_files_only": True}
    if importlib.util.find_spec("accelerate") is None:
        kwargs["low_cpu_mem_usage"] = False  # what diffusers falls back to anyway, minus its warning
    return kwargs


def read_folder_weights(subfolder: str, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """All tensors of a diffusers/transformers model subfolder, as float32: one safetensors file
    (the plain one before a variant such as .fp16), a sharded one with its index, or with
    `allow_pickle` a .bin file."""
    files = sorted(os.listdir(subfolder)) if os.path.isdir(subfolder) else []
    paths = _weight_paths(subfolder, files, ".safetensors")
    if not paths:
        paths = _weight_paths(subfolder, files, ".bin")
        if paths and not allow_pickle:
            raise pickle_refused(paths[0])
    if not paths:
        raise ModelError(f"{subfolder} holds no model weights (.safetensors)")
    tensors = {}
    for path in paths:
        tensors.update(read_state_dict(path, allow_pickle))
    return as_float32(tensors)


def _weight_paths(subfolder: str, files: list[str], extension: str) -> list[str]:
    indexes = [f for f in files if f.endswith(extension + ".index.json")]
    if indexes:
        with open(os.path.join(subfolder, min(indexes, key=len)), encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(subfolder, s) for s in shards]
    singles = [f for f in files if f.endswith(extension)]
    return [os.path.join(subfolder, min(singles, key=len))] if singles else []  # shortest: no variant


def model_weights_path(path: str, allow_pickle: bool, folder_weights, what: str, published: str) -> str:
    """The weights file a single-file model path names: the file itself, or the one `folder_weights`
    finds in a folder (see `single_model_file`). ModelError when there is none."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.exists(path):
        raise ModelError(f"{what} model {path} does not exist")
    if os.path.isdir(path):
        weights = folder_weights(path, allow_pickle)
        if weights is None:
            raise ModelError(
                f"{path} holds no {what} weights: put the published {published} (or its converted "
                ".safetensors) in a folder of its own, or give the file itself"
            )
        return weights
    if os.path.splitext(path)[1].lower() not in WEIGHT_EXTENSIONS:
        raise ModelError(f"{path}: a {what} model is a {published} or .safetensors file, or a folder")
    if is_pickle(path) and not allow_pickle:
        raise pickle_refused(path)
    return path


def single_model_file(
    folder: str,
    allow_pickle: bool,
    *,
    belongs,
    what: str,
    published: str,
    preferred=None,
    problem=None,
    skip=None,
) -> str | None:
    """The weights file of a folder that holds one single-file model (LaVie, VideoCrafter2), or None
    when the folder is not such a model.

    Such a folder holds the model's weights and nothing but configs and notes: no subfolder, and no
    weights file whose tensor names fail `belongs(names)` (so a models directory holding one of them
    among others is not taken for a model itself); `skip(file name)` passes files over. A converted
    .safetensors comes before a pickle; among several of one kind, the one `preferred(file name)`
    picks. `problem(names)` says why a file of this family cannot run here (another release), a
    ModelError when nothing else is left. A legacy pickle whose names cannot be read without the
    opt-in counts as the model under its `published` name (PickleRefusedError)."""
    entries = sorted(e for e in os.listdir(folder) if not e.startswith(".") and e != "__pycache__")
    if any(os.path.isdir(os.path.join(folder, e)) for e in entries):
        return None
    files = [
        os.path.join(folder, e)
        for e in entries
        if os.path.splitext(e)[1].lower() in WEIGHT_EXTENSIONS and not (skip and skip(e))
    ]
    good, problems, unread = [], [], []
    for path in files:
        names = tensor_names(path, allow_pickle)
        if names is None:
            unread.append(path)
        elif not belongs(names):
            return None  # other weights: not this model's folder
        elif problem and problem(names):
            problems.append(f"{path}: {problem(names)}")
        else:
            good.append(path)
    if not good and not problems:
        named = [p for p in unread if os.path.basename(p) == published]
        if named:
            raise pickle_refused(named[0])
        return None
    if not good:
        raise ModelError(problems[0])
    safe = [p for p in good if os.path.splitext(p)[1].lower() in SAFE_EXTENSIONS]
    pickled = [p for p in good if p not in safe]
    for group in (safe, pickled):
        if len(group) > 1:
            chosen = [p for p in group if preferred and preferred(os.path.basename(p))]
            if len(chosen) != 1:
                raise ModelError(
                    f"{folder} holds several {what} weights files ({', '.join(map(os.path.basename, group))}); "
                    "give the one to use as the model path, or keep one per folder"
                )
            group[:] = chosen
    chosen = (safe or pickled)[0]
    if is_pickle(chosen) and not allow_pickle:
        raise pickle_refused(chosen)
    return chosen


def conversion_target(source: str, out: str | None, dtype: torch.dtype) -> str:
    """Where `convert` writes a model read from `source`: `out`, or beside the source as
    `<stem>.fp16.safetensors` (float16) / `<stem>.safetensors`. Refuses what would make no sense."""
    if out is None and not is_pickle(source):
        raise ModelError(f"{source} is already a .safetensors file: there is nothing to convert")
    stem = os.path.splitext(source)[0]
    out = os.path.abspath(out or stem + (".fp16" if dtype == torch.float16 else "") + ".safetensors")
    if not out.lower().endswith(".safetensors"):
        raise ModelError(f"{out}: the converted model is written as a .safetensors file")
    if out == os.path.abspath(source):
        raise ModelError(f"{out} is the file being converted; choose another output path")
    return out


def save_safetensors(tensors: dict[str, torch.Tensor], out: str, metadata: dict[str, str]) -> str:
    """Write `tensors` to `out` through a temporary name, so a failed write never leaves a half-written
    file under the final one."""
    from safetensors.torch import save_file

    os.makedirs(os.path.dirname(out), exist_ok=True)
    partial = out + ".partial"
    try:
        save_file({key: tensor.contiguous() for key, tensor in tensors.items()}, partial, metadata=metadata)
        os.replace(partial, out)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return out


def read_json(path: str) -> dict:
    """A JSON object from a config file; a ModelError naming the file when it is not one."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as error:
        raise ModelError(f"{path} is not readable JSON: {error}") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path} does not hold a JSON object")
    return data


def fit_problem(expected: dict[str, torch.Size], weights: dict[str, torch.Tensor]) -> str | None:
    """What keeps `weights` from loading strictly into a module with `expected` names and shapes."""
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    shapes = [k for k in sorted(expected) if k in weights and tuple(weights[k].shape) != tuple(expected[k])]

    def some(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")

    found = []
    if missing:
        found.append(f"{len(missing)} missing ({some(missing)})")
    if unexpected:
        found.append(f"{len(unexpected)} unexpected ({some(unexpected)})")
    if shapes:
        first = shapes[0]
        found.append(
            f"{len(shapes)} of another shape (e.g. {first}: {tuple(weights[first].shape)} in the file, "
            f"{tuple(expected[first])} in the config)"
        )
    return "; ".join(found) or None
