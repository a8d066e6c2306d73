"""ZeroScope v2 / ModelScope text-to-video (diffusers layout) as a T2V backend.

A folder as diffusers saves a TextToVideoSDPipeline:
    model_index.json, unet/ (UNet3DConditionModel), text_encoder/ (CLIPTextModel, OpenCLIP-H
    converted), tokenizer/, scheduler/scheduler_config.json, vae/ (optional here).
Only the model classes are used (diffusers' pipeline classes do not import with the WebUI's
transformers). The VAE is only needed to project latents when the T2I model uses another latent
space; both families share SD's kl-f8 VAE, so it is optional.
"""

from __future__ import annotations

import math
import os

import torch

from lib_elevator.errors import ModelError, SettingsError
from lib_elevator.latent_space import SD1_LATENTS, LatentSpace
from lib_elevator.schedule import alphas_from_config
from lib_elevator.t2v.base import PromptPair, T2VBackend, modules_on
from lib_elevator.weights import folder_weights_kwargs, read_json, read_state_dict, variant_file


class ZeroScopeBackend(T2VBackend):
    kind = "zeroscope"
    sampler = "ddim"
    supports_forward_chunking = True

    def __init__(self, unet, text_encoder, tokenizer, scheduler_config: dict, vae=None, name: str = ""):
        self.unet = unet.eval()
        self.text_encoder = text_encoder.eval()
        self.tokenizer = tokenizer
        self.vae = vae.eval() if vae is not None else None
        self.name = name
        # ZeroScope v2 was trained on 24-frame clips, ModelScope on 16
        self.native_frames = 24 if "zeroscope" in name.lower() else 16
        self.scheduler_config = dict(scheduler_config)
        self.alphas_cumprod = alphas_from_config(self.scheduler_config)
        self.prediction_type = self.scheduler_config.get("prediction_type", "epsilon")
        scaling = getattr(vae.config, "scaling_factor", None) if vae is not None else None
        self.latent_space = LatentSpace(
            SD1_LATENTS.family, unet.config.in_channels, float(scaling or SD1_LATENTS.scaling_factor)
        )
        self.device = unet.device
        self.dtype = unet.dtype
        self.chunk_size: int | None = None
        self.chunk_dim = 1

    # ------------------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        folder: str,
        device="cpu",
        dtype: torch.dtype = torch.float32,
        allow_pickle: bool = False,
        forward_chunk_size: int | None = None,
    ) -> ZeroScopeBackend:
        """Load a diffusers text-to-video folder. `forward_chunk_size` (the authors use 8) runs the
        UNet's feed-forward layers in chunks to save memory (see `enable_forward_chunking`)."""
        from diffusers import AutoencoderKL, UNet3DConditionModel
        from transformers import CLIPTokenizer

        folder = os.path.abspath(folder)
        check_zeroscope_folder(folder)
        unet = UNet3DConditionModel.from_pretrained(
            folder,
            subfolder="unet",
            torch_dtype=dtype,
            **folder_weights_kwargs(os.path.join(folder, "unet"), allow_pickle),
        )
        text_encoder = load_clip_text_encoder(os.path.join(folder, "text_encoder"), dtype, allow_pickle)
        # The folder's own tokenizer files decide the pad token ("!" for OpenCLIP-based models).
        tokenizer = CLIPTokenizer.from_pretrained(os.path.join(folder, "tokenizer"), local_files_only=True)
        vae = None
        vae_dir = os.path.join(folder, "vae")
        if os.path.isfile(os.path.join(vae_dir, "config.json")):
            vae = AutoencoderKL.from_pretrained(
                folder, subfolder="vae", torch_dtype=dtype, **folder_weights_kwargs(vae_dir, allow_pickle)
            )
        scheduler_config = read_json(os.path.join(folder, "scheduler", "scheduler_config.json"))
        backend = cls(unet, text_encoder, tokenizer, scheduler_config, vae, name=os.path.basename(folder))
        backend.to(device, dtype)
        if forward_chunk_size:
            backend.enable_forward_chunking(forward_chunk_size)
        return backend

    # ------------------------------------------------------------------------------ T2VBackend
    @torch.no_grad()
    def encode_prompt(self, prompt: str, negative_prompt: str, device: torch.device | None = None) -> PromptPair:
        with modules_on([self.text_encoder], device):
            return PromptPair(self._embed(prompt), self._embed(negative_prompt))

    def _embed(self, text: str) -> torch.Tensor:
        tokens = self.tokenizer(
            text,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        device = self.text_encoder.device
        # As diffusers' text-to-video pipeline: the attention mask only for encoders trained with one.
        mask = (
            tokens.attention_mask.to(device) if getattr(self.text_encoder.config, "use_attention_mask", False) else None
        )
        hidden = self.text_encoder(tokens.input_ids.to(device), attention_mask=mask)[0]
        return hidden.to(self.dtype)

    def model_output(self, video: torch.Tensor, timestep: int, context: torch.Tensor) -> torch.Tensor:
        if self.chunk_size:
            self._check_chunking(video)
        # UNet3DConditionModel takes (B, C, F, h, w) and repeats the text context per frame itself.
        return self.unet(video.to(self.device, self.dtype), timestep, encoder_hidden_states=context).sample

    def to(self, device=None, dtype=None) -> ZeroScopeBackend:
        modules = [self.unet, self.text_encoder] + ([self.vae] if self.vae is not None else [])
        for module in modules:
            module.to(device=device, dtype=dtype)
        self.device, self.dtype = self.unet.device, self.unet.dtype
        return self

    # ------------------------------------------------------------------------------ memory
    def enable_forward_chunking(self, chunk_size: int = 8, dim: int = 1) -> None:
        """Run feed-forward layers `chunk_size` rows at a time along `dim` (the authors use
        chunk_size=8, dim=1): less activation memory, same result. With dim=1 the chunked length
        is the frame count in temporal layers and h*w in spatial ones; with dim=0 it is the batch
        times those. Either way they must divide evenly (checked on every call)."""
        if dim not in (0, 1) or chunk_size < 1:
            raise SettingsError(
                "t2v_ff_chunk",
                f"forward chunking needs dim 0 or 1 and chunk_size >= 1; got dim={dim}, chunk_size={chunk_size}"
            )
        self.unet.enable_forward_chunking(chunk_size=chunk_size, dim=dim)
        self.chunk_size, self.chunk_dim = chunk_size, dim

    def disable_forward_chunking(self) -> None:
        self.unet.disable_forward_chunking()
        self.chunk_size = None

    def _check_chunking(self, video: torch.Tensor) -> None:
        """diffusers raises a terse error deep in the UNet when a chunked length does not divide;
        say up front which sizes must be multiples of the chunk size."""
        batch, frames, h, w = video.shape[0], video.shape[2], video.shape[3], video.shape[4]
        areas = []
        for _ in self.unet.config.block_out_channels:
            areas.append(h * w)
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        # Spatial layers see (batch * frames, h * w) rows, temporal ones (batch * h * w, frames).
        if self.chunk_dim == 1:
            lengths, what = [frames, *areas], "the frame count and the latent area (h*w) at every UNet level"
        else:
            lengths, what = (
                [batch * frames, *(batch * a for a in areas)],
                "batch*frames and batch*h*w at every UNet level",
            )
        bad = [n for n in lengths if n % self.chunk_size]
        if bad:
            raise SettingsError(
                "t2v_ff_chunk",
                f"feed-forward chunking of {self.chunk_size} along dim {self.chunk_dim} needs {what} "
                f"({', '.join(map(str, lengths))}) to be multiples of {self.chunk_size}; change the frame count or "
                "size, lower the chunk size, or turn chunking off"
            )


def check_zeroscope_folder(folder: str) -> None:
    """Raise a clear error when `folder` is not a usable diffusers text-to-video folder."""
    if not os.path.isdir(folder):
        raise ModelError(f"T2V model folder {folder} does not exist")
    missing = [
        part
        for part in (
            "model_index.json",
            "unet/config.json",
            "text_encoder/config.json",
            "tokenizer/vocab.json",
            "tokenizer/merges.txt",
            "scheduler/scheduler_config.json",
        )
        if not os.path.isfile(os.path.join(folder, part))
    ]
    if missing:
        raise ModelError(f"{folder} is not a complete diffusers text-to-video folder: missing {', '.join(missing)}")
    unet_class = read_json(os.path.join(folder, "unet", "config.json")).get("_class_name")
    if unet_class != "UNet3DConditionModel":
        raise ModelError(
            f"{folder} is not a ZeroScope/ModelScope text-to-video folder: its unet/ is a {unet_class}, "
            "not a UNet3DConditionModel"
        )


def load_clip_text_encoder(folder: str, dtype: torch.dtype = torch.float32, allow_pickle: bool = False):
    """A transformers CLIPTextModel from a diffusers text_encoder/ folder. A pickled
    pytorch_model.bin is read with the restricted loader and handed over as a state dict, whatever
    transformers' own default is."""
    from transformers import CLIPTextModel

    found = variant_file(folder, "model", allow_pickle=False) or variant_file(folder, "pytorch_model", allow_pickle)
    if found is None:
        raise ModelError(f"{folder} has no text-encoder weights (model.safetensors)")
    name, variant, safe = found
    if safe:
        return CLIPTextModel.from_pretrained(
            folder, local_files_only=True, use_safetensors=True, variant=variant, torch_dtype=dtype
        ).eval()
    state = read_state_dict(os.path.join(folder, name), allow_pickle)
    return CLIPTextModel.from_pretrained(
        folder, local_files_only=True, variant=variant, state_dict=state, torch_dtype=dtype
    ).eval()
