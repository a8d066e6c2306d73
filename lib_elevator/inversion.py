"""Deterministic DDIM inversion and the PnP-inversion correction, in sigma space.

A denoiser is any callable D(x, sigma) -> x0 prediction for a k-diffusion-form latent
x = x0 + sigma * eps (the WebUI's sampler denoisers have exactly this contract; the standalone
pipeline wraps a diffusers UNet the same way). Its noise estimate is eps = (x - D(x, sigma)) / sigma.

One inversion step from sigma_a up to sigma_b > sigma_a is DDIM run backwards, with the noise
estimated at the *target* level from the current sample, as diffusers' DDIMInverseScheduler does:
    eps = eps_theta(x_a as a DDPM latent, timestep of sigma_b)
    x_b = x_a + (sigma_b - sigma_a) * eps
In k-form the DDPM latent x_a / sqrt(1 + sigma_a^2) is fed at level sigma_b by rescaling the input
to x_a * sqrt(1 + sigma_b^2) / sqrt(1 + sigma_a^2).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Denoiser = Callable[[torch.Tensor, float], torch.Tensor]


def denoised_from_output(x: torch.Tensor, sigma: float, output: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """Clean prediction for a k-form latent x at `sigma` from a UNet's raw output on the DDPM-form
    input x / sqrt(1 + sigma^2): eps (x0 = x - sigma * eps) or v (x0 = sqrt(abar) x_t - sqrt(1-abar) v)."""
    if prediction_type == "v_prediction":
        scale = 1.0 / math.sqrt(1.0 + sigma * sigma)  # sqrt(abar); sqrt(1 - abar) = sigma * scale
        return scale * (x * scale) - sigma * scale * output
    return x - sigma * output


def euler_step(x: torch.Tensor, denoised: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """One deterministic DDIM (eta = 0) step = Euler step of the probability-flow ODE in sigma."""
    return x + (sigma_next - sigma) * (x - denoised) / sigma


def inversion_step(x: torch.Tensor, sigma_from: float, sigma_to: float, denoise: Denoiser) -> torch.Tensor:
    if not sigma_to > sigma_from >= 0:
        raise ValueError(f"an inversion step must raise the noise level; got {sigma_from} -> {sigma_to}")
    scale = math.sqrt(1.0 + sigma_to**2) / math.sqrt(1.0 + sigma_from**2)
    x_in = x * scale
    eps = (x_in - denoise(x_in, sigma_to)) / sigma_to
    return x + (sigma_to - sigma_from) * eps


def inversion_path(schedule_sigmas, target_index: int, clean_sigma: float, steps: int | None = None) -> list[float]:
    """Ascending noise levels from a clean latent up to schedule_sigmas[target_index].

    The full path (steps=None, the authors' behaviour) visits every level of the sampling schedule
    below the target: [clean, sigma_{S-1}, ..., sigma_target] (the schedule's tail, reversed).
    `steps` keeps that many steps, evenly spread over the full path (its last step always lands on
    the target).
    """
    sigmas = list(schedule_sigmas)
    if not 0 <= target_index < len(sigmas) - 1:
        raise ValueError(f"inversion target index {target_index} is outside the schedule")
    tail = [s for s in reversed(sigmas[target_index:]) if s > clean_sigma]
    full = [clean_sigma] + tail
    if steps is None or steps >= len(full) - 1:
        return full
    if steps < 1:
        raise ValueError(f"inversion steps must be >= 1 (or full); got {steps}")
    picks = sorted({round(k * (len(full) - 1) / steps) for k in range(steps + 1)})
    return [full[k] for k in picks]


def ddim_invert(
    x0: torch.Tensor, path: list[float], denoise: Denoiser, before_call: Callable[[], None] | None = None
) -> dict[float, torch.Tensor]:
    """Invert a clean latent along `path`; returns {sigma: latent} for every level after the start.

    The latent at path[-1] is the one to continue sampling from; the others are the trajectory the
    PnP correction compares against. The clean latent is taken as the DDPM-form sample at path[0]
    (as diffusers' DDIMInverseScheduler does when path[0] is abar_0's sigma), i.e. k-form
    x0 * sqrt(1 + path[0]^2).
    """
    x = x0 * math.sqrt(1.0 + path[0] ** 2)
    trajectory: dict[float, torch.Tensor] = {}
    for sigma_from, sigma_to in zip(path[:-1], path[1:]):
        if before_call is not None:
            before_call()
        x = inversion_step(x, sigma_from, sigma_to, denoise)
        trajectory[sigma_to] = x
    return trajectory


def pnp_correction(
    x_next: torch.Tensor,
    inverted_now: torch.Tensor,
    inverted_next: torch.Tensor,
    denoised_now: torch.Tensor,
    sigma: float,
    sigma_next: float,
) -> torch.Tensor:
    """PnP-inversion correction of one sampling step taken after a refine.

    Replays the step sigma -> sigma_next from the inversion trajectory (cond prediction, no
    guidance, `denoised_now` = D_cond(inverted_now, sigma)) and adds the gap between where the
    inversion had been and where the replay lands, so the inversion error does not accumulate.
    """
    replayed = euler_step(inverted_now, denoised_now, sigma, sigma_next)
    return x_next + (inverted_next - replayed)
