"""A text-to-image model made of diffusers components (SD1.x, SD2.x, SDXL), as the standalone
pipeline uses it. Loading lives in `lib_elevator.loaders`; this file is what a loaded model can do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from lib_elevator.dtypes import working_dtype
from lib_elevator.inversion import Denoiser, denoised_from_output
from lib_elevator.latent_space import SD1_LATENTS, SDXL_LATENTS, LatentSpace
from lib_elevator.schedule import alphas_from_config, timestep_of_sigma

T2I_KINDS = ("sd1", "sd2", "sdxl")


@dataclass
class TextCondition:
    """UNet conditioning for a batch of rows: context (B, tokens, dim) and, for SDXL, the added
    embeddings {"text_embeds": (B, 1280), "time_ids": (B, 6)}."""

    context: torch.Tensor
    added: dict[str, torch.Tensor] = field(default_factory=dict)

    def repeat(self, rows: int) -> TextCondition:
        return TextCondition(self.context.expand(rows, -1, -1), {k: v.expand(rows, -1) for k, v in self.added.items()})

    @staticmethod
    def cat(parts: list[TextCondition]) -> TextCondition:
        added = {k: torch.cat([p.added[k] for p in parts]) for k in parts[0].added}
        return TextCondition(torch.cat([p.context for p in parts]), added)


@dataclass
class T2IModel:
    """diffusers UNet2DConditionModel + AutoencoderKL + CLIP text encoder(s) and tokenizer(s)."""

    kind: str
    unet: object
    vae: object
    text_encoders: list
    tokenizers: list
    scheduler_config: dict = field(default_factory=dict)
    name: str = ""
    # SDXL: an empty negative prompt is all zeros (context and pooled embedding), as diffusers'
    # StableDiffusionXLPipeline does by default; a diffusers folder's model_index.json can turn it off.
    force_zeros_for_empty_prompt: bool = True

    def __post_init__(self):
        if self.kind not in T2I_KINDS:
            raise ValueError(f"T2I kind must be one of {', '.join(T2I_KINDS)}; got {self.kind!r}")
        self.alphas_cumprod = alphas_from_config(self.scheduler_config)
        self.prediction_type = self.scheduler_config.get("prediction_type", "epsilon")
        scaling = getattr(self.vae.config, "scaling_factor", None) or (0.13025 if self.kind == "sdxl" else 0.18215)
        base = SDXL_LATENTS if self.kind == "sdxl" else SD1_LATENTS
        self.latent_space = LatentSpace(base.family, self.unet.config.in_channels, float(scaling))

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def to(self, device=None, dtype=None) -> T2IModel:
        for module in [self.unet, self.vae, *self.text_encoders]:
            module.to(device=device, dtype=dtype)
        return self

    # ---------------------------------------------------------------------------------- text
    @staticmethod
    def _tokens(tokenizer, text: str, encoder) -> torch.Tensor:
        ids = tokenizer(
            text, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        return ids.to(encoder.device)  # the encoder's: an AnimateDiff backend may run it away from the UNet

    @torch.no_grad()
    def encode_prompt(self, prompt: str, height: int, width: int, negative: bool = False) -> TextCondition:
        """Conditioning of one row for `prompt` (SD1/SD2: last hidden state; SDXL: the penultimate
        hidden states of both encoders, the second one's pooled projection and the size ids).

        `negative=True` asks for the conditioning of a negative prompt, i.e. the uncond rows of CFG and
        the un-guided ("empty") inversion prompt. It differs only for SDXL with an empty prompt: zeros
        for the context and the pooled embedding, with the same size ids as a positive prompt, which is
        what diffusers' `StableDiffusionXLPipeline.encode_prompt` gives when no negative prompt is given
        (`force_zeros_for_empty_prompt`; its negative time ids default to the positive ones) and what the
        WebUI gives its own empty negative prompt. SD1/SD2 encode "" either way."""
        if negative and prompt == "" and self.kind == "sdxl" and self.force_zeros_for_empty_prompt:
            return self.zero_condition(height, width)
        if self.kind != "sdxl":
            encoder = self.text_encoders[0]
            return TextCondition(encoder(self._tokens(self.tokenizers[0], prompt, encoder))[0].to(self.dtype))
        hidden, pooled = [], None
        for tokenizer, encoder in zip(self.tokenizers, self.text_encoders):
            out = encoder(self._tokens(tokenizer, prompt, encoder), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            pooled = out[0]  # the last encoder (CLIPTextModelWithProjection) gives text_embeds first
        return TextCondition(
            torch.cat(hidden, dim=-1).to(self.dtype),
            {"text_embeds": pooled.to(self.dtype), "time_ids": self.time_ids(height, width)},
        )

    def time_ids(self, height: int, width: int) -> torch.Tensor:
        """SDXL's size conditioning as diffusers builds it: original size, crop top-left (0, 0), target size."""
        return torch.tensor([[height, width, 0, 0, height, width]], device=self.device, dtype=self.dtype)

    def zero_condition(self, height: int, width: int) -> TextCondition:
        """SDXL's empty negative prompt: zeros of the shapes the encoders give (tokens x both hidden
        sizes; the second encoder's projection), the size ids unchanged."""
        tokens = self.tokenizers[0].model_max_length
        width_sum = sum(encoder.config.hidden_size for encoder in self.text_encoders)
        pooled = self.text_encoders[-1].config.projection_dim
        zeros = dict(device=self.device, dtype=self.dtype)
        return TextCondition(
            torch.zeros(1, tokens, width_sum, **zeros),
            {"text_embeds": torch.zeros(1, pooled, **zeros), "time_ids": self.time_ids(height, width)},
        )

    # ---------------------------------------------------------------------------------- UNet
    def model_output(self, latents: torch.Tensor, timestep: float, cond: TextCondition) -> torch.Tensor:
        """Raw UNet output (eps or v) for DDPM-form latents (B, C, h, w)."""
        t = torch.tensor(timestep, device=self.device, dtype=torch.float32)
        return self.unet(
            latents.to(self.device, self.dtype),
            t,
            encoder_hidden_states=cond.context,
            added_cond_kwargs=cond.added or None,
        ).sample

    def denoiser(self, cond: TextCondition, chunks=None) -> Denoiser:
        """k-diffusion-form denoiser D(x, sigma) -> x0 over the rows of `cond`, in float32. `chunks`: a
        `cross_frame.FrameChunks` that runs each call a few frames at a time."""
        keys = list(cond.added)

        def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
            scale = 1.0 / math.sqrt(1.0 + sigma * sigma)
            t = timestep_of_sigma(self.alphas_cumprod, sigma)
            if chunks is not None and chunks.active:
                out = chunks.run(
                    lambda latents, context, *added: self.model_output(
                        latents, t, TextCondition(context, dict(zip(keys, added)))
                    ),
                    x.shape[0], x * scale, cond.context, *cond.added.values(),
                ).to(working_dtype(x))
            else:
                out = self.model_output(x * scale, t, cond).to(working_dtype(x))
            return denoised_from_output(x, sigma, out, self.prediction_type)

        return denoise

    # ---------------------------------------------------------------------------------- VAE
    @torch.no_grad()
    def decode(self, latents: torch.Tensor, batch: int = 4) -> torch.Tensor:
        """DDPM-form latents (F, C, h, w) -> images float32 in [0, 1], (F, H, W, 3), `batch` at a time."""
        frames = []
        for chunk in latents.split(max(1, batch)):
            pixels = self.vae.decode(
                chunk.to(self.vae.device, self.vae.dtype) / self.latent_space.scaling_factor
            ).sample
            frames.append(((pixels.float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).cpu())
        return torch.cat(frames)
