"""LaVie base (Vchitect, arXiv 2309.15103) as a T2V backend, read from the file users download.

A model is the published `lavie_base.pt` (a torch pickle, `{"ema": state_dict}` with 830 tensors in
diffusers UNet naming plus the `_temp` layers), or its conversion by `python -m lib_elevator convert`
(a `.safetensors` of the 814 learned tensors), given as the file itself or as a folder holding it.

LaVie base has no text encoder or VAE of its own: it was trained with Stable Diffusion 1.4's CLIP
ViT-L/14 text encoder (last hidden state) and kl-f8 VAE, the same weights SD 1.5 has. They come from
a SD1.x base model, as for AnimateDiff: the checkpoint loaded in the WebUI, or `--t2v-base` / the
T2I model when it is SD1.x standalone. Only the base's text encoder, tokenizer and VAE are kept.

Configuration beside the weights (optional; the built-in defaults are the published model's):
- `config.json`: an SD 1.4-style `unet/config.json`, read by `lavie_net.lavie_config`;
- `scheduler_config.json`: an SD 1.4 scheduler config. LaVie's schedule replaces its betas whatever it
  says (linear 1e-4 -> 0.02, as the official code forces `beta_start`/`beta_end`/`beta_schedule`), so
  those three keys are ignored; `num_train_timesteps` must be 1000, `prediction_type` epsilon and
  `trained_betas` unset, else the file is refused. Its other keys (step offsets, clipping) concern
  samplers, not the model, and are ignored.

Loading maps a pickle's tensors from the file (`read_state_dict(..., mmap=True)`), drops the 16 RoPE
frequency copies after checking them (`split_rope_freqs`, `check_rope_freqs`), casts every tensor to
the working dtype as it is taken, and builds `LaVieUNet` on the meta device so that the tensors become
its weights (strict: every name and shape must match). SDEdit steps are DDIM (eta = 0) on LaVie's
linear table, ε-prediction.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass

import torch

from lib_elevator.errors import ModelError
from lib_elevator.latent_space import SD1_LATENTS
from lib_elevator.schedule import alphas_cumprod
from lib_elevator.t2v import lavie_net as net
from lib_elevator.t2v.base import BaseTextEncoder, T2VBackend
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
    tensor_names,
    unwrap_state_dict,
)

logger = logging.getLogger(__name__)

KIND = "lavie"
WEIGHTS_NAME = "lavie_base.pt"
CONFIG_NAME = "config.json"
SCHEDULER_CONFIG_NAME = "scheduler_config.json"
# The other two stages of the published release, often downloaded into the same folder; they are not the
# text-to-video base model and are passed over by name (without being opened).
OTHER_STAGES = ("lavie_interpolation", "lavie_vsr")
# LaVie's training schedule: linear betas 1e-4 -> 0.02 over 1000 steps.
BETA_SCHEDULE, BETA_START, BETA_END, TRAIN_STEPS = "linear", 1e-4, 0.02, 1000
# Names that mark a LaVie-family UNet: a temporal attention with its RoPE table (the published file) or its
# relative-position bias (a conversion, which leaves the RoPE constant out).
TEMPORAL_MARKER = ".attn_temp."
POSITION_MARKERS = (".attn_temp.rotary_emb.", ".attn_temp.time_rel_pos_bias.")
# Original (ldm) naming: VideoCrafter and SD checkpoints; LaVie uses diffusers names.
LDM_UNET_PREFIX = "model.diffusion_model."
VIDEOCRAFTER_MARKER = ".temopral_conv."  # misspelt so in every VideoCrafter release
BUILTIN_SOURCE = "the built-in LaVie base config (SD 1.4's unet/config.json)"
UNET_CLASSES = (None, "UNet2DConditionModel", "UNet3DConditionModel")


def lavie_alphas_cumprod() -> torch.Tensor:
    """ᾱ_t of LaVie's training schedule, float64 (1000,): linear betas 1e-4 -> 0.02."""
    return alphas_cumprod(BETA_SCHEDULE, BETA_START, BETA_END, TRAIN_STEPS)


# ---------------------------------------------------------------------------------- recognising files


def is_lavie(names) -> bool:
    """Whether tensor names (of a file, or a pickle's strings) are a LaVie-family UNet's."""
    names = list(names)
    if any(n.startswith(LDM_UNET_PREFIX) for n in names):
        return False
    return any(TEMPORAL_MARKER in n for n in names) and any(m in n for n in names for m in POSITION_MARKERS)


def _other_stage(name: str) -> bool:
    return name.lower().startswith(OTHER_STAGES)


def file_kind(path: str, names, allow_pickle: bool = False) -> str | None:
    """ "lavie" for a LaVie weights file with these tensor names, None for another file; a pickle without
    the opt-in is refused (PickleRefusedError)."""
    if not is_lavie(names):
        return None
    if is_pickle(path) and not allow_pickle:
        raise pickle_refused(path)
    return KIND


def folder_weights(folder: str, allow_pickle: bool = False) -> str | None:
    """The LaVie weights file of a model folder, or None when the folder is not one
    (`weights.single_model_file`). The published interpolation and super-resolution stages,
    `lavie_interpolation.pt` and `lavie_vsr.pt`, may sit beside the base and are passed over; among
    several weights files the one named `lavie_base.*` is taken."""
    return single_model_file(
        folder, allow_pickle, belongs=is_lavie, what="LaVie", published=WEIGHTS_NAME, skip=_other_stage,
        preferred=lambda name: name.lower().startswith("lavie_base."),
    )
def folder_kind(folder: str, allow_pickle: bool = False) -> str | None:
    """ "lavie" for a LaVie model folder, None for another folder (see `folder_weights`)."""
    return KIND if folder_weights(folder, allow_pickle) else None


# ---------------------------------------------------------------------------------- model files


@dataclass
class LaVieFiles:
    """What a LaVie model path resolves to, with its configuration read and checked."""

    weights: str
    config_path: str | None  # config.json used; None for the built-in config
    scheduler_path: str | None  # scheduler_config.json checked; None when there is none
    unet_config: dict  # the SD 1.4-style UNet config as given (the built-in one without a file)
    config: net.LaVieConfig

    @property
    def source(self) -> str:
        return f"its config {self.config_path}" if self.config_path else BUILTIN_SOURCE


def resolve_model(path: str, allow_pickle: bool = False) -> LaVieFiles:
    """The weights file and configs of a LaVie model path (a file or a folder), the configs checked."""
    weights = model_weights_path(path, allow_pickle, folder_weights, "LaVie base", WEIGHTS_NAME)
    if not os.path.isdir(path):
        names = tensor_names(weights)  # None for a legacy pickle: then the names are checked when it is read
        if names is not None:
            check_names(weights, names)
    folder = os.path.dirname(weights)
    config_path = os.path.join(folder, CONFIG_NAME)
    config_path = config_path if os.path.isfile(config_path) else None
    unet_config = read_unet_config(config_path) if config_path else dict(net.LAVIE_BASE_UNET_CONFIG)
    try:
        config = net.lavie_config(unet_config)
    except ValueError as error:
        raise ModelError(f"{config_path or BUILTIN_SOURCE}: {error}") from None
    scheduler_path = os.path.join(folder, SCHEDULER_CONFIG_NAME)
    scheduler_path = scheduler_path if os.path.isfile(scheduler_path) else None
    if scheduler_path:
        check_scheduler_config(read_json(scheduler_path), scheduler_path)
    return LaVieFiles(weights, config_path, scheduler_path, unet_config, config)


def read_unet_config(path: str) -> dict:
    config = read_json(path)
    if config.get("_class_name") not in UNET_CLASSES:
        raise ModelError(
            f"{path} describes a {config['_class_name']}, not LaVie's UNet; the config.json beside LaVie weights is "
            "an SD 1.4-style unet/config.json (remove or move the other model's file)"
        )
    return config


def check_scheduler_config(config: dict, path: str = SCHEDULER_CONFIG_NAME) -> None:
    """Refuse a scheduler config that contradicts LaVie's training schedule in what cannot be replaced.
    Its betas are replaced by LaVie's (as the official code does), so those keys are not checked."""
    name = config.get("_class_name")
    if name is not None and not str(name).endswith("Scheduler"):
        raise ModelError(f"{path} describes a {name}, not a scheduler")
    steps = config.get("num_train_timesteps", TRAIN_STEPS)
    if steps != TRAIN_STEPS:
        raise ModelError(f"{path}: num_train_timesteps={steps!r}; LaVie base was trained with {TRAIN_STEPS} steps")
    prediction = config.get("prediction_type", "epsilon")
    if prediction != "epsilon":
        raise ModelError(f"{path}: prediction_type={prediction!r}; LaVie base predicts the noise (epsilon)")
    if config.get("trained_betas") is not None:
        raise ModelError(f"{path}: trained_betas are set; LaVie base's betas are linear from 1e-4 to 0.02")
    given = (config.get("beta_schedule"), config.get("beta_start"), config.get("beta_end"))
    if any(v is not None for v in given) and given != (BETA_SCHEDULE, BETA_START, BETA_END):
        logger.debug("%s: its betas %s are replaced by LaVie's linear 1e-4 -> 0.02", path, given)


# ---------------------------------------------------------------------------------- reading weights


def read_unet_weights(files: LaVieFiles, dtype: torch.dtype, allow_pickle: bool = False):
    """(the UNet's tensors in `dtype`, the RoPE frequency entries as stored). Each tensor is cast as it is
    taken out of the file's dict, so at most one copy of the weights is held (none when the file is mapped
    and already in `dtype`)."""
    path = files.weights
    state = unwrap_state_dict(read_state_dict(path, allow_pickle, mmap=True))
    check_names(path, list(state), sample=True)
    weights, freqs = net.split_rope_freqs(state)
    del state
    for key in list(weights):
        tensor = weights.pop(key)
        weights[key] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    return weights, freqs


def check_names(path: str, names: list[str], sample: bool = False) -> None:
    """Raise a ModelError saying what the file is when its tensor names are not LaVie base's (`sample`: the
    names are the state dict's keys, a few of which the message may show)."""
    if any(n.startswith(LDM_UNET_PREFIX) for n in names):
        if any(VIDEOCRAFTER_MARKER in n for n in names):
            raise ModelError(
                f"{path}: this is a VideoCrafter2 checkpoint ({LDM_UNET_PREFIX}* with temporal convolutions), "
                "not LaVie base"
            )
        raise ModelError(
            f"{path} is not a LaVie base checkpoint: its UNet is in the original {LDM_UNET_PREFIX}* naming "
            "(an image-model checkpoint?)"
        )
    if not any(TEMPORAL_MARKER in n for n in names):
        found = f"; found {', '.join(names[:3]) or 'no tensors'}" if sample else ""
        raise ModelError(
            f"{path} is not a LaVie base checkpoint: it has no temporal attention weights (*{TEMPORAL_MARKER}*{found})"
        )


def build_unet(files: LaVieFiles, weights: dict[str, torch.Tensor], freqs=None) -> net.LaVieUNet:
    """The UNet with `weights` as its parameters (built on the meta device; strict). `freqs`: the file's
    RoPE entries, checked against the constant (none at all is a conversion's layout)."""
    with torch.device("meta"):
        unet = net.LaVieUNet(files.config)
    expected = {k: v.shape for k, v in unet.state_dict().items()}
    problem = fit_problem(expected, weights)
    if problem:
        hint = "" if files.config_path else f"; a model of other sizes needs its {CONFIG_NAME} beside the weights"
        raise ModelError(f"{files.weights} does not fit {files.source}: {problem}{hint}")
    if freqs:
        try:
            net.check_rope_freqs(freqs, unet)
        except ValueError as error:
            raise ModelError(f"{files.weights}: {error}") from None
    unet.load_state_dict(weights, strict=True, assign=True)
    return unet.requires_grad_(False).eval()


# ---------------------------------------------------------------------------------- the backend


class LaVieBackend(BaseTextEncoder, T2VBackend):
    kind = KIND
    sampler = "ddim"
    prediction_type = "epsilon"

    def __init__(self, unet: net.LaVieUNet, base, name: str = ""):
        """`base`: the SD1.x T2IModel that supplies the text encoder, tokenizer and VAE. Only those are
        kept, so a caller that drops the base frees its UNet."""
        self.unet = unet.eval()
        self.text_encoder = base.text_encoders[0]
        self.tokenizer = base.tokenizers[0]
        self.vae = base.vae  # only used to project latents; LaVie shares SD1's latent space
        self.name = name
        self.alphas_cumprod = lavie_alphas_cumprod()
        self.latent_space = SD1_LATENTS
        self.device, self.dtype = unet.device, unet.dtype

    # ------------------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls, path: str, base, device="cpu", dtype: torch.dtype = torch.float32, allow_pickle: bool = False
    ) -> LaVieBackend:
        """Load a LaVie base model: a weights file or a folder holding one (see the module docstring).
        `base`: the SD1.x model whose text encoder, tokenizer and VAE LaVie runs with, a loaded `T2IModel`
        of kind "sd1" or a path for `loaders.load_t2i`. Pickles need `allow_pickle` (weights-only loader)."""
        path = os.path.abspath(os.fspath(path))
        if base is None:
            raise ModelError(
                f"{path} is a LaVie base model; it needs a SD1.x base model for its text encoder and VAE "
                "(pass base= or --t2v-base, or select a SD1.x checkpoint)"
            )
        # The file's own problems first (a mapped read), then the base's.
        files = resolve_model(path, allow_pickle)
        weights, freqs = read_unet_weights(files, dtype, allow_pickle)
        unet = build_unet(files, weights, freqs)
        del weights, freqs
        if isinstance(base, (str, os.PathLike)):
            from lib_elevator.loaders import load_t2i

            base = load_t2i(os.fspath(base), device=device, dtype=dtype, allow_pickle=allow_pickle)
        check_base(base, path, files.config.cross_attention_dim)
        return cls(unet, base, name=os.path.basename(path)).to(device, dtype)

    # ------------------------------------------------------------------------------ T2VBackend
    def model_output(self, video: torch.Tensor, timestep: int, context: torch.Tensor) -> torch.Tensor:
        """ε for video latents (B, 4, F, h, w) with one text context (B, 77, 768) per video."""
        return self.unet(video.to(self.device, self.dtype), timestep, context.to(self.device, self.dtype))

    def to(self, device=None, dtype=None) -> LaVieBackend:
        # Only the UNet is this backend's own; the text encoder and VAE belong to the base model.
        self.unet.to(device=device, dtype=dtype)
        self.device, self.dtype = self.unet.device, self.unet.dtype
        return self


def check_base(base, path: str, text_width: int | None = None) -> None:
    """The base must be a loaded SD1.x T2IModel whose text encoder is as wide as LaVie's cross-attention."""
    kind = getattr(base, "kind", None)
    name = getattr(base, "name", "") or type(base).__name__
    if kind != "sd1":
        raise ModelError(
            f"{path}: LaVie base runs with SD 1.x's CLIP text encoder and VAE; the base model {name} is "
            f"{kind or 'not a loaded T2I model'} (choose a SD1.x checkpoint as the base)"
        )
    width = getattr(base.text_encoders[0].config, "hidden_size", None)
    if text_width is not None and width != text_width:
        raise ModelError(
            f"{path}: its cross-attention takes {text_width}-wide text embeddings; the text encoder of the base "
            f"model {name} gives {width} (choose a SD1.x checkpoint as the base)"
        )


# ---------------------------------------------------------------------------------- conversion


def convert_checkpoint(
    path: str, out: str | None = None, dtype: torch.dtype = torch.float16, allow_pickle: bool = False
) -> str:
    """Write LaVie base's UNet (the 814 learned tensors; the RoPE constant is left out) as a .safetensors
    file in `dtype`, after checking that it loads; the config.json and scheduler_config.json beside the
    source come along when it goes elsewhere. Returns the path written. The result loads without the
    pickle opt-in and without unpickling anything."""

    files = resolve_model(path, allow_pickle)
    out = conversion_target(files.weights, out, dtype)
    configs = _configs_to_copy(files, out)
    weights, freqs = read_unet_weights(files, dtype, allow_pickle)
    build_unet(files, dict(weights), freqs)  # loads as it will when the file is used
    save_safetensors(weights, out, {"format": "pt", "model": KIND, "converted_from": os.path.basename(files.weights)})
    del weights
    for source, target in configs:
        shutil.copyfile(source, target)
    return out


def _configs_to_copy(files: LaVieFiles, out: str) -> list[tuple[str, str]]:
    """(source, target) of the configs that must go beside `out` for it to load like the source; a
    different file already there under the same name is refused before anything is written."""
    pairs = []
    for source in (files.config_path, files.scheduler_path):
        if source is None:
            continue
        target = os.path.join(os.path.dirname(out), os.path.basename(source))
        if os.path.exists(target):
            if os.path.realpath(target) == os.path.realpath(source):
                continue
            with open(source, "rb") as a, open(target, "rb") as b:
                if a.read() == b.read():
                    continue
            raise ModelError(
                f"{target} exists and differs from {source}, which the converted model needs beside it; "
                "choose another output folder"
            )
        pairs.append((source, target))
    return pairs
