"""VideoCrafter2 (text-to-video 512 v2.0) as a T2V backend, read from the file users download.

A model is the published `model.ckpt` (a torch pickle, `{"state_dict": ...}` with 2,039 tensors), or
its conversion by `python -m lib_elevator convert` (a `.safetensors` of the 2,026 tensors used), given
as the file itself or as a folder holding it. An official inference yaml beside it (the same stem as
the weights, or the folder's only yaml) replaces the built-in configuration; the text tower its
`cond_stage_config.params.arch` names is ViT-H-14 (built in) or is described by an open_clip-format
`<arch>.json` next to the yaml.

The networks are `lib_elevator.t2v.videocrafter_net`'s. Loading maps a pickle's tensors from disk
(`read_state_dict(..., mmap=True)`), keeps the three parts that inference uses - UNet
(`model.diffusion_model.*`), OpenCLIP text tower (`cond_stage_model.model.*`), VAE
(`first_stage_model.*`) -, casts each tensor to the working dtype as it is taken, and builds the
modules on the meta device so that the file's tensors become their weights (no second copy, no
random initialisation of 1.4 B parameters). The 13 schedule buffers are only compared with the
formulas. Every part loads strictly.

The schedule is SD's scaled-linear ᾱ_t plus the signal scale s_t the model was trained with
(`signal_scale`): x_t = s_t sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε; `T2VBackend.denoise` applies it.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass

import torch

from lib_elevator.errors import ModelError
from lib_elevator.latent_space import SD1_LATENTS, LatentSpace
from lib_elevator.t2v import videocrafter_net as net
from lib_elevator.t2v.base import PromptPair, T2VBackend
from lib_elevator.weights import (
    conversion_target,
    fit_problem,
    is_pickle,
    model_weights_path,
    pickle_refused,
    read_json,
    read_state_dict,
    save_safetensors,
    single_model_file,
    unwrap_state_dict,
)

logger = logging.getLogger(__name__)

KIND = "videocrafter2"
CHECKPOINT_NAME = "model.ckpt"
# The parts inference uses: (name, key prefix in the checkpoint, what messages call it).
PARTS = (
    ("unet", net.UNET_PREFIX, "UNet"),
    ("text", net.TEXT_PREFIX, "text encoder"),
    ("vae", net.VAE_PREFIX, "VAE"),
)
# Names only VideoCrafter-family checkpoints have under model.diffusion_model. (VideoCrafter1 and 2, their
# image-to-video models, DynamiCrafter): temporal convolutions (misspelt in every release), the frame-rate
# embedding, the extra temporal attention after the first convolution, VC1's relative positions.
FAMILY_MARKERS = (".temopral_conv.", ".fps_embedding.", ".init_attn.", ".relative_position_k.")
YAML_EXTENSIONS = (".yaml", ".yml")

# The official configs/inference_t2v_512_v2.0.yaml, reduced to what `read_vc2_config` reads; used when
# no yaml comes with the weights.
BUILTIN_CONFIG = {
    "model": {
        "target": "lvdm.models.ddpm3d.LatentDiffusion",
        "params": {
            "linear_start": 0.00085,
            "linear_end": 0.012,
            "timesteps": 1000,
            "conditioning_key": "crossattn",
            "scale_by_std": False,
            "scale_factor": net.VC2_SCALE_FACTOR,
            "use_scale": True,
            "scale_b": 0.7,
            "unet_config": {"params": net.VC2_UNET_CONFIG},
            "first_stage_config": {"params": net.VC2_VAE_PARAMS},
            "cond_stage_config": {
                "target": "lvdm.modules.encoders.condition.FrozenOpenCLIPEmbedder",
                "params": {"layer": "penultimate", "arch": "ViT-H-14"},
            },
        },
    }
}
BUILTIN_SOURCE = "the built-in VideoCrafter2 config (inference_t2v_512_v2.0.yaml)"
LAVIE_MARKER = "attn_temp"


# ---------------------------------------------------------------------------------- recognising files


def is_videocrafter(names) -> bool:
    """Whether tensor names (of a file, or a pickle's strings) are a VideoCrafter-family checkpoint's."""
    return any(net.UNET_PREFIX in n and any(m in n for m in FAMILY_MARKERS) for n in names)


def videocrafter_problem(names) -> str | None:
    """Why a VideoCrafter-family checkpoint with these names is not VideoCrafter2's text-to-video
    model, or None when it is."""
    names = list(names)
    if any("image_proj_model." in n or ".to_k_ip." in n for n in names):
        return (
            "an image-to-video VideoCrafter/DynamiCrafter checkpoint (it has an image projection); only the "
            "text-to-video VideoCrafter2 (512 v2.0) runs here"
        )
    if any(".relative_position_k." in n for n in names) or not any(".temopral_conv." in n for n in names):
        return (
            "a VideoCrafter1 checkpoint (relative-position temporal attention, no temporal convolutions); only "
            "VideoCrafter2 (512 v2.0) runs here"
        )
    return None


def folder_weights(folder: str, allow_pickle: bool = False) -> str | None:
    """The VideoCrafter2 weights file of a model folder, or None when the folder is not one
    (`weights.single_model_file`); another VideoCrafter release (VideoCrafter1, image-to-video) is a
    ModelError naming it."""
    return single_model_file(
        folder, allow_pickle, belongs=is_videocrafter, what="VideoCrafter2", published=CHECKPOINT_NAME,
        problem=videocrafter_problem, preferred=lambda name: name == CHECKPOINT_NAME,
    )
def folder_kind(folder: str, allow_pickle: bool = False) -> str | None:
    """ "videocrafter2" for a VideoCrafter2 model folder, None for another folder (see `folder_weights`)."""
    return KIND if folder_weights(folder, allow_pickle) else None


def file_kind(path: str, names, allow_pickle: bool = False) -> str | None:
    """ "videocrafter2" for a VideoCrafter2 weights file with these tensor names, None for a file that
    is no VideoCrafter checkpoint; a ModelError for another VideoCrafter model or a pickle without the
    opt-in."""
    if not is_videocrafter(names):
        return None
    problem = videocrafter_problem(names)
    if problem:
        raise ModelError(f"{path}: {problem}")
    if is_pickle(path) and not allow_pickle:
        raise pickle_refused(path)
    return KIND


# ---------------------------------------------------------------------------------- model files


@dataclass
class VideoCrafterFiles:
    """What a VideoCrafter2 model path resolves to, with its configuration read and checked."""

    weights: str
    yaml: str | None  # the inference yaml used, None for the built-in config
    arch_json: str | None  # the open_clip config of a text tower that is not built in
    config: dict  # read_vc2_config's result
    unet_params: dict  # unet_config.params as the yaml spells them
    text_config: dict  # OpenCLIPTextTower's config

    @property
    def source(self) -> str:
        return f"its config {self.yaml}" if self.yaml else BUILTIN_SOURCE


def resolve_model(path: str, allow_pickle: bool = False) -> VideoCrafterFiles:
    """The weights file, yaml and configuration of a VideoCrafter2 model path (a file or a folder)."""
    weights = model_weights_path(path, allow_pickle, folder_weights, "VideoCrafter2", CHECKPOINT_NAME)
    yaml_path = find_yaml(weights)
    original = read_yaml(yaml_path) if yaml_path else BUILTIN_CONFIG
    try:
        config = net.read_vc2_config(original, yaml_path or BUILTIN_SOURCE)
    except ValueError as error:
        raise ModelError(str(error)) from None
    unet_params = original["model"]["params"]["unet_config"].get("params") or {}
    text_config, arch_json = text_tower_config(config["text_arch"], yaml_path)
    return VideoCrafterFiles(weights, yaml_path, arch_json, config, dict(unet_params), text_config)


def find_yaml(weights: str) -> str | None:
    """The inference yaml of a weights file: `<stem>.yaml` beside it (the WebUI's convention), else the
    only yaml in its folder; None when there is none."""
    folder, stem = os.path.dirname(weights), os.path.splitext(os.path.basename(weights))[0]
    for extension in YAML_EXTENSIONS:
        if os.path.isfile(os.path.join(folder, stem + extension)):
            return os.path.join(folder, stem + extension)
    yamls = sorted(
        e for e in os.listdir(folder) if e.lower().endswith(YAML_EXTENSIONS) and not e.startswith(".")
    )
    if len(yamls) > 1:
        raise ModelError(
            f"{folder} holds several yaml files ({', '.join(yamls)}); name the one describing "
            f"{os.path.basename(weights)} {stem}.yaml"
        )
    return os.path.join(folder, yamls[0]) if yamls else None


def read_yaml(path: str) -> dict:
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as error:
        raise ModelError(f"{path} is not a readable yaml file: {error}") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path} is not a VideoCrafter inference config (no model: section)")
    return data


def text_tower_config(arch: str, yaml_path: str | None) -> tuple[dict, str | None]:
    """(OpenCLIPTextTower config, the json it came from or None) for an open_clip model name."""
    if arch == "ViT-H-14":
        return dict(net.OPENCLIP_VIT_H_14_TEXT), None
    folder = os.path.dirname(yaml_path) if yaml_path else "."
    json_path = os.path.join(folder, arch + ".json")
    if not os.path.isfile(json_path):
        raise ModelError(
            f"{yaml_path}: its text encoder arch {arch!r} is not built in (ViT-H-14 is); put that model's "
            f"open_clip config ({arch}.json) beside the yaml"
        )
    try:
        return net.text_config_from_open_clip(read_json(json_path), json_path), json_path
    except ValueError as error:
        raise ModelError(str(error)) from None


# ---------------------------------------------------------------------------------- reading weights


def read_parts(
    files: VideoCrafterFiles, dtype: torch.dtype, allow_pickle: bool = False
) -> dict[str, dict[str, torch.Tensor]]:
    """{"unet", "text", "vae"}: each part's tensors without its prefix, in `dtype`. Each tensor is cast
    as it is taken out of the file's dict and everything else is dropped, so at most one part's worth of
    the file is ever held twice (none when the file is mapped and already in `dtype`)."""
    path = files.weights
    state = unwrap_state_dict(read_state_dict(path, allow_pickle, mmap=True))
    if not any(key.startswith(net.UNET_PREFIX) for key in state):
        if any(LAVIE_MARKER in key for key in state):
            raise ModelError(
                f"{path}: this is a LaVie checkpoint (temporal layers named {LAVIE_MARKER}), not VideoCrafter2"
            )
        sample = ", ".join(list(state)[:3]) or "no tensors"
        raise ModelError(
            f"{path} is not a VideoCrafter2 checkpoint: it has no {net.UNET_PREFIX}* weights (found {sample})"
        )
    problem = videocrafter_problem(state)
    if problem:
        raise ModelError(f"{path}: {problem}")
    parts: dict[str, dict[str, torch.Tensor]] = {name: {} for name, _, _ in PARTS}
    buffers = {}
    for key in list(state):
        tensor = state.pop(key)
        for name, prefix, _ in PARTS:
            if key.startswith(prefix):
                parts[name][key[len(prefix) :]] = tensor.to(dtype) if tensor.is_floating_point() else tensor
                break
        else:
            if key in net.SCHEDULE_BUFFERS:
                buffers[key] = tensor
    for name, prefix, what in PARTS:
        if not parts[name]:
            raise ModelError(f"{path} holds no {what} ({prefix}* weights); it is not a whole VideoCrafter2 checkpoint")
    check_schedule_buffers(buffers, files.config, path, files.source)
    return parts


def check_schedule_buffers(
    buffers: dict[str, torch.Tensor], config: dict, path: str, source: str = BUILTIN_SOURCE
) -> list[str]:
    """Compare the schedule buffers a checkpoint stores with the formulas for its config. Inference
    uses the formulas; a difference means the file was trained with another schedule than its config
    says, which is worth a warning, not a refusal. Returns the names that differ."""
    if not buffers:
        return []
    expected = net.vc2_schedule_buffers(
        config["timesteps"], config["linear_start"], config["linear_end"], config["scale_b"], config["mid_step"]
    )
    differ = [
        name
        for name, stored in buffers.items()
        if stored.shape != expected[name].shape
        or not torch.allclose(stored.double(), expected[name].double(), rtol=1e-4, atol=1e-6)
    ]
    if differ:
        logger.warning(
            "%s: its schedule buffers %s differ from the schedule of %s; the config's schedule is used",
            path, ", ".join(differ), source,
        )
    return differ


def _mismatch(files: VideoCrafterFiles, what: str, problem: str) -> ModelError:
    hint = "" if files.yaml else "; a model of other sizes needs its inference yaml beside the weights"
    return ModelError(f"{files.weights} does not fit {files.source}: {what} tensors: {problem}{hint}")


def build_unet(files: VideoCrafterFiles, weights: dict[str, torch.Tensor]) -> net.VideoCrafterUNet:
    """The UNet with `weights` as its parameters (built on the meta device; strict)."""
    try:
        with torch.device("meta"):
            unet = net.VideoCrafterUNet(files.unet_params)
    except ValueError as error:
        raise ModelError(f"{files.yaml or BUILTIN_SOURCE}: {error}") from None
    return _assign(unet, weights, files, "UNet")


def build_text_tower(files: VideoCrafterFiles, weights: dict[str, torch.Tensor]) -> net.OpenCLIPTextTower:
    try:
        with torch.device("meta"):
            tower = net.OpenCLIPTextTower(files.text_config)
    except ValueError as error:
        raise ModelError(f"{files.arch_json or files.yaml or BUILTIN_SOURCE}: {error}") from None
    return _assign(tower, weights, files, "text encoder")


def build_vae(files: VideoCrafterFiles, weights: dict[str, torch.Tensor]):
    """diffusers AutoencoderKL converted from the ldm-named tensors (used for latent projection only)."""
    try:
        vae = net.vc2_vae(weights, files.config["first_stage"], files.config["scale_factor"])
    except (ValueError, RuntimeError, KeyError) as error:
        text = str(error)
        mismatch = next((line.strip() for line in text.splitlines() if "size mismatch" in line), None)
        raise _mismatch(files, "VAE", mismatch or text.splitlines()[0] if text else repr(error)) from None
    return vae.requires_grad_(False).eval()


def _assign(module: torch.nn.Module, weights: dict[str, torch.Tensor], files: VideoCrafterFiles, what: str):
    expected = {k: v.shape for k, v in module.state_dict().items()}
    problem = fit_problem(expected, weights)
    if problem:
        raise _mismatch(files, what, problem)
    module.load_state_dict(weights, strict=True, assign=True)
    return module.requires_grad_(False).eval()


# ---------------------------------------------------------------------------------- the backend


class VideoCrafter2Backend(T2VBackend):
    kind = KIND
    sampler = "ddim"
    prediction_type = "epsilon"

    def __init__(self, unet, text_tower, vae, config: dict, name: str = "", fps: int = net.DEFAULT_FPS):
        """`config`: `read_vc2_config`'s result (schedule, scale factor, text layer)."""
        self.unet = unet.eval()
        self.text_tower = text_tower.eval()
        self.vae = vae.eval()
        self.name = name
        self.config = config
        self.fps = fps  # the frame-rate condition of every UNet call (the official text-to-video default 28)
        self.text_layer = config["text_layer"]
        self.alphas_cumprod = net.vc2_alphas_cumprod(config["timesteps"], config["linear_start"], config["linear_end"])
        self.signal_scales = net.scale_arr(config["timesteps"], config["scale_b"], config["mid_step"])
        self.latent_space = LatentSpace(SD1_LATENTS.family, SD1_LATENTS.channels, float(config["scale_factor"]))
        self.device = unet.out[2].weight.device
        self.dtype = unet.dtype

    # ------------------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        path: str,
        device="cpu",
        dtype: torch.dtype = torch.float32,
        allow_pickle: bool = False,
        fps: int = net.DEFAULT_FPS,
    ) -> VideoCrafter2Backend:
        """Load a VideoCrafter2 model: a weights file or a folder holding one (see the module
        docstring). Pickles need `allow_pickle` and are read with the weights-only loader."""
        files = resolve_model(path, allow_pickle)
        parts = read_parts(files, dtype, allow_pickle)
        unet = build_unet(files, parts.pop("unet"))
        text_tower = build_text_tower(files, parts.pop("text"))
        vae = build_vae(files, parts.pop("vae"))
        name = os.path.basename(os.path.abspath(path))
        backend = cls(unet, text_tower, vae, files.config, name=name, fps=fps)
        return backend.to(device, dtype)

    # ------------------------------------------------------------------------------ T2VBackend
    def signal_scale(self, timestep: int) -> float:
        return float(self.signal_scales[timestep])

    @torch.no_grad()
    def encode_prompt(self, prompt: str, negative_prompt: str, device: torch.device | None = None) -> PromptPair:
        # The text tower visits `device` and goes back, as the other backends' text encoders do.
        home = self.text_tower.ln_final.weight.device
        if device is not None:
            self.text_tower.to(device)
        try:
            cond, uncond = (self._embed(text) for text in (prompt, negative_prompt))
        finally:
            if device is not None:
                self.text_tower.to(home)
        return PromptPair(cond, uncond)

    def _embed(self, text: str) -> torch.Tensor:
        """(1, context_length, width): open_clip tokens through the tower, penultimate block + ln_final."""
        length = int(self.text_tower.config["context_length"])
        ids = net.vc2_tokenize(text, context_length=length).to(self.text_tower.ln_final.weight.device)
        return self.text_tower.encode(ids, layer=self.text_layer).to(self.dtype)

    def model_output(self, video: torch.Tensor, timestep: int, context: torch.Tensor) -> torch.Tensor:
        return self.unet(video.to(self.device, self.dtype), timestep, context.to(self.device, self.dtype), self.fps)

    def to(self, device=None, dtype=None) -> VideoCrafter2Backend:
        for module in (self.unet, self.text_tower, self.vae):
            module.to(device=device, dtype=dtype)
        self.device, self.dtype = self.unet.out[2].weight.device, self.unet.dtype
        return self


# ---------------------------------------------------------------------------------- conversion


def convert_checkpoint(
    path: str, out: str | None = None, dtype: torch.dtype = torch.float16, allow_pickle: bool = False
) -> str:
    """Write the parts of a VideoCrafter2 checkpoint that inference uses (UNet, text tower, VAE, under
    their checkpoint prefixes) as a .safetensors file in `dtype`, after checking that they load; the
    yaml and text-tower json come along when it goes elsewhere. Returns the path written. The result
    loads without the pickle opt-in and without unpickling anything."""

    files = resolve_model(path, allow_pickle)
    out = conversion_target(files.weights, out, dtype)
    parts = read_parts(files, dtype, allow_pickle)
    # Check before writing that the three parts load as they will when the file is used.
    for name, build in (("unet", build_unet), ("text", build_text_tower), ("vae", build_vae)):
        build(files, dict(parts[name]))
    tensors = {prefix + key: tensor for name, prefix, _ in PARTS for key, tensor in parts[name].items()}
    del parts
    save_safetensors(tensors, out, {"format": "pt", "model": KIND, "converted_from": os.path.basename(files.weights)})
    _copy_configs(files, out)
    return out


def _copy_configs(files: VideoCrafterFiles, out: str) -> None:
    """Make `out` find the same yaml (and text-tower json) as the source: copied as `<out stem>.yaml`
    unless the yaml lookup from `out` already finds the source's."""
    if files.yaml is None:
        return
    try:
        found = find_yaml(out)
    except ModelError:
        found = None
    if found is None or os.path.realpath(found) != os.path.realpath(files.yaml):
        shutil.copyfile(files.yaml, os.path.splitext(out)[0] + ".yaml")
    if files.arch_json:
        target = os.path.join(os.path.dirname(out), os.path.basename(files.arch_json))
        if os.path.realpath(target) != os.path.realpath(files.arch_json):
            shutil.copyfile(files.arch_json, target)
