"""Latent spaces and the projection between them.

SD1.x, SD2.x, ZeroScope/ModelScope and AnimateDiff all use the SD "kl-f8" VAE family with scaling
0.18215 ("sd1" here); SDXL has its own VAE with scaling 0.13025. Latents of one family mean
nothing to a model of the other, so when the T2I and T2V families differ, frames pass through
pixel space: decode with one VAE, encode (posterior mean, deterministic) with the other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LatentSpace:
    family: str  # "sd1" (SD1/SD2/ZeroScope/AnimateDiff) or "sdxl"
    channels: int = 4
    scaling_factor: float = 0.18215
    downscale: int = 8

    def same_as(self, other: LatentSpace) -> bool:
        return (
            self.family == other.family
            and self.channels == other.channels
            and self.scaling_factor == other.scaling_factor
        )


SD1_LATENTS = LatentSpace("sd1", 4, 0.18215)
SDXL_LATENTS = LatentSpace("sdxl", 4, 0.13025)


def needs_projection(t2i: LatentSpace, t2v: LatentSpace, mode: str = "auto") -> bool:
    """mode: "auto" (project when the families differ), "always" or "never"."""
    if mode == "always":
        return True
    if mode == "never":
        return False
    if mode != "auto":
        raise ValueError(f"latent projection must be auto, always or never; got {mode!r}")
    return not t2i.same_as(t2v)


@dataclass(frozen=True)
class VaeCodec:
    """A VAE as two calls: unscaled latents -> pixels in [-1, 1], and pixels -> unscaled latents
    (the posterior mean, so projections are deterministic). `device`/`dtype` say where inputs go; either
    may be a callable, read at every call (a VAE can move between calls: --medvram, offloading)."""

    decode: Callable[[torch.Tensor], torch.Tensor]
    encode: Callable[[torch.Tensor], torch.Tensor]
    device: torch.device | Callable[[], torch.device]
    dtype: torch.dtype | Callable[[], torch.dtype]

    def placement(self) -> tuple[torch.device, torch.dtype]:
        device = self.device() if callable(self.device) else self.device
        return device, self.dtype() if callable(self.dtype) else self.dtype


def posterior_mean(vae, pixels: torch.Tensor) -> torch.Tensor:
    """Deterministic encode of any KL-f8 autoencoder with `encoder` + `quant_conv` (diffusers, ldm
    and sgm all have them): the first half of the moments is the mean."""
    moments = vae.encoder(pixels)
    if getattr(vae, "quant_conv", None) is not None:
        moments = vae.quant_conv(moments)
    return moments.chunk(2, dim=1)[0]


def diffusers_codec(vae) -> VaeCodec:
    return VaeCodec(lambda z: vae.decode(z).sample, lambda px: posterior_mean(vae, px), lambda: vae.device,
                    lambda: vae.dtype)


class LatentProjector:
    """Maps latents of one VAE's space into another's, `batch` frames at a time (bounds memory)."""

    def __init__(self, source: VaeCodec, source_space: LatentSpace, target: VaeCodec, target_space: LatentSpace,
                 batch: int = 4):
        if source is None or target is None:
            raise ValueError("latent projection needs a VAE on both sides; the T2V model provides none")
        self.source, self.source_space = source, source_space
        self.target, self.target_space = target, target_space
        self.batch = max(1, int(batch))

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        out = []
        for chunk in latents.split(self.batch):
            z = chunk.to(*self.source.placement()) / self.source_space.scaling_factor
            pixels = self.source.decode(z).clamp(-1, 1)
            mean = self.target.encode(pixels.to(*self.target.placement()))
            out.append((mean * self.target_space.scaling_factor).to(latents.device, latents.dtype))
        return torch.cat(out)

    def reverse(self) -> LatentProjector:
        return LatentProjector(self.target, self.target_space, self.source, self.source_space, self.batch)
