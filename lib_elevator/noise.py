"""Random draws.

Every random number of a run (initial noise, SDEdit noise, LCM step noise) is drawn through one
`NoiseSource`, in a fixed order. A run is therefore reproducible from its seed, and a caller can
hand in its own source to replay another implementation draw for draw on the same weights.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch


class NoiseSource(Protocol):
    def randn(self, shape: tuple[int, ...]) -> torch.Tensor:
        """Standard normal float32 tensor of `shape`, on the CPU."""


class TorchNoise:
    """Draws from one seeded CPU `torch.Generator`, in call order.

    Draws are made on the CPU so the numbers do not depend on the device the models run on
    (the same choice as diffusers' `randn_tensor` with a CPU generator).
    """

    def __init__(self, seed: int | None = None, generator: torch.Generator | None = None):
        if generator is None:
            generator = torch.Generator("cpu")
            generator.manual_seed(int(seed) if seed is not None else torch.seed())
        self.generator = generator

    def randn(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(tuple(shape), generator=self.generator, dtype=torch.float32)


class WebUIJobNoise:
    """The draws a WebUI job with seed `seed` makes, in the standalone pipeline's order: the base
    noise from the job's own generator, then the residuals as the host draws them (one CPU generator
    per frame, seeded seed + k: the host's per-image seeds of one batch), then the job's generator for
    every later draw (SDEdit, LCM). With it the standalone pipeline replays a WebUI job draw for draw
    (both AUTOMATIC1111 and Forge draw their initial noise this way on the CPU)."""

    def __init__(self, seed: int):
        self.seed, self.job, self.draws = int(seed), TorchNoise(seed), 0

    def randn(self, shape: tuple[int, ...]) -> torch.Tensor:
        self.draws += 1
        if self.draws == 2:
            return torch.stack([torch.randn(tuple(shape[1:]), generator=torch.Generator().manual_seed(self.seed + k))
                                for k in range(shape[0])])
        return self.job.randn(shape)


def mix_noise(base: torch.Tensor, residual: torch.Tensor, alpha: float) -> torch.Tensor:
    """(alpha * base + residual) / sqrt(1 + alpha^2): unit variance per element, and two frames
    sharing `base` correlate by alpha^2 / (1 + alpha^2).

    base: (1, C, h, w), shared by all frames; residual: (F, C, h, w), one per frame.
    """
    if alpha < 0:
        raise ValueError(f"noise mix alpha must be >= 0, got {alpha}")
    scale = 1.0 / math.sqrt(1.0 + alpha * alpha)
    return base * (alpha * scale) + residual * scale


def mixed_noise(noise: NoiseSource, frames: int, latent_shape: tuple[int, int, int], alpha: float) -> torch.Tensor:
    """Initial noise of a video: (F, C, h, w). Draws the shared base first, then the residuals."""
    base = noise.randn((1, *latent_shape))
    residual = noise.randn((frames, *latent_shape))
    return mix_noise(base, residual, alpha)
