"""Latent spaces and the projection between them.

SD1.x, SD2.x, ZeroScope/ModelScope and AnimateDiff all use the SD "kl-f8" VAE family with scaling
0.18215 ("sd1" here); SDXL has its own VAE with scaling 0.13025. Latents of one family mean
nothing to a model of the other, so when the T2I and T2V families differ, frames pass through
pixel space: decode with one VAE, encode (posterior mean, deterministic) with the other.
"""

from __future__ import annotations

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


class LatentProjector:
    """Maps latents of one VAE's space into another's, `batch` frames at a time (bounds memory)."""

    def __init__(self, source_vae, source_space: LatentSpace, target_vae, target_space: LatentSpace, batch: int = 4):
        if source_vae is None or target_vae is None:
            raise ValueError("latent projection needs a VAE on both sides; the T2V model provides none")
        self.source_vae, self.source_space = source_vae, source_space
        self.target_vae, self.target_space = target_vae, target_space
        self.batch = max(1, int(batch))

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        out = []
        for chunk in latents.split(self.batch):
            src = chunk.to(self.source_vae.device, self.source_vae.dtype) / self.source_space.scaling_factor
            pixels = self.source_vae.decode(src).sample.clamp(-1, 1)
            moments = self.target_vae.encode(pixels.to(self.target_vae.device, self.target_vae.dtype)).latent_dist.mean
            out.append((moments * self.target_space.scaling_factor).to(latents.device, torch.float32))
        return torch.cat(out)

    def reverse(self) -> LatentProjector:
        return LatentProjector(self.target_vae, self.target_space, self.source_vae, self.source_space, self.batch)
