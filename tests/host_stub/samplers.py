"""Sampler functions with the host's calling conventions, and a denoiser with a known answer.

- k-diffusion (`func(model, x, sigmas, extra_args=None, callback=None, disable=None, ...)`): the
  callback runs after the model evaluation of step i and before the update, with
  {'x', 'i', 'sigma', 'sigma_hat', 'denoised'}; x is k-form (x0 + sigma * eps).
- CompVis timesteps (`func(model, x, timesteps, ...)`, ascending integer timesteps, DDPM-form x):
  `len(timesteps) - 1` updates from the largest timestep down to the smallest; the callback runs
  after the update with `denoised` = pred_x0.

Random draws of the ancestral/eta samplers come from one shared generator, as the host's do through
`TorchHijack` and `p.rng`: a split run draws the same stream as an unsplit one.
"""

from __future__ import annotations

import math

import torch

_rng = torch.Generator("cpu")


def seed_noise(seed: int) -> None:
    _rng.manual_seed(seed)


def randn_like(x: torch.Tensor) -> torch.Tensor:
    return torch.randn(x.shape, generator=_rng, dtype=x.dtype)


def sd_alphas_cumprod() -> torch.Tensor:
    """SD1's training table (scaled-linear betas 0.00085..0.012, 1000 steps), float32 as the host keeps it."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, 0).float()


def sigma_of(alpha_bar: float) -> float:
    return math.sqrt((1.0 - alpha_bar) / alpha_bar)


def ddim_timesteps(steps: int) -> torch.Tensor:
    """The host's CompVis timesteps: ascending range(0, 1000, 1000 // steps) + 1, clipped to 999."""
    return torch.clamp(torch.arange(0, 1000, 1000 // steps) + 1, 0, 999)


def karras_free_sigmas(alphas_cumprod: torch.Tensor, steps: int) -> torch.Tensor:
    """A descending k-diffusion schedule: the sigmas of evenly spaced training steps, then 0."""
    ts = torch.linspace(999, 0, steps).round().long()
    sigmas = [sigma_of(float(alphas_cumprod[t])) for t in ts.tolist()]
    return torch.tensor([*sigmas, 0.0], dtype=torch.float64)


class GaussianData:
    """Data x0 ~ N(mean, std^2) per element: the exact denoiser is E[x0 | x0 + sigma * n = x]."""

    def __init__(self, mean: torch.Tensor, std: float):
        self.mean, self.var = mean, std * std
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def denoise(self, x: torch.Tensor, sigma) -> torch.Tensor:
        s2 = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1))) ** 2
        return (self.var * x + s2 * self.mean) / (self.var + s2)

    def k_model(self, x, sigma, **extra_args):
        """A k-diffusion model: x0 from k-form x at sigma (one per row)."""
        self.calls.append((x.clone(), torch.as_tensor(sigma).clone()))
        return self.denoise(x, sigma)


class TimestepsModel:
    """A CompVis-style model: eps from DDPM-form x at integer timesteps, over `alphas_cumprod`."""

    def __init__(self, data: GaussianData, alphas_cumprod: torch.Tensor):
        self.data, self.alphas_cumprod = data, alphas_cumprod
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, x, t, **extra_args):
        self.calls.append((x.clone(), t.clone()))
        sigma = torch.tensor([sigma_of(float(self.alphas_cumprod[int(step)])) for step in t.tolist()], dtype=x.dtype)
        s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        x_k = x * torch.sqrt(1.0 + s * s)
        return (x_k - self.data.denoise(x_k, sigma)) / s


@torch.no_grad()
def sample_euler(
    model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"),
    s_noise=1.0,
):
    """k-diffusion's Euler, churn included: gamma depends on the length of the schedule it is given."""
    extra_args = extra_args or {}
    ones = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        gamma = min(s_churn / (len(sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (gamma + 1)
        if gamma > 0:
            x = x + randn_like(x) * s_noise * (sigma_hat**2 - sigma**2) ** 0.5
        denoised = model(x, sigma_hat * ones, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})
        x = x + (x - denoised) / sigma_hat * (sigma_next - sigma_hat)
    return x


def ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    if not eta or not sigma_to:
        return float(sigma_to), 0.0
    up = min(float(sigma_to), eta * math.sqrt(sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2))
    return math.sqrt(sigma_to**2 - up**2), up


@torch.no_grad()
def sample_euler_ancestral(
    model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0, noise_sampler=None
):
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or (lambda sigma, sigma_next: randn_like(x))
    ones = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = model(x, sigma * ones, **extra_args)
        down, up = ancestral_step(sigma, sigma_next, eta)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        x = x + (x - denoised) / sigma * (down - sigma)
        if sigma_next > 0:
            x = x + noise_sampler(sigma, sigma_next) * s_noise * up
    return x


@torch.no_grad()
def ddim(model, x, timesteps, extra_args=None, callback=None, disable=None, eta=0.0):
    extra_args = extra_args or {}
    table = model.alphas_cumprod
    ones = x.new_ones([x.shape[0]])
    n = len(timesteps)
    for i in range(n - 1):
        index = n - 1 - i
        a_t, a_prev = float(table[timesteps[index]]), float(table[timesteps[index - 1]])
        eps = model(x, timesteps[index].item() * ones, **extra_args)
        pred_x0 = (x - math.sqrt(1.0 - a_t) * eps) / math.sqrt(a_t)
        sigma_t = eta * math.sqrt((1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev))
        x = math.sqrt(a_prev) * pred_x0 + math.sqrt(1.0 - a_prev - sigma_t**2) * eps
        if sigma_t:
            x = x + sigma_t * randn_like(x)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": 0, "sigma_hat": 0, "denoised": pred_x0})
    return x
