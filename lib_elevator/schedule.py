"""Noise levels: the sigma <-> DDPM-timestep mapping, DDIM grids and the choice of refine steps.

Conventions (k-diffusion form, as in the WebUI's samplers):
    x_sigma = x0 + sigma * eps,   sigma_t = sqrt((1 - abar_t) / abar_t)
A DDPM/diffusers latent at timestep t is x_t = sqrt(abar_t) * x0 + sqrt(1 - abar_t) * eps
= x_sigma / sqrt(1 + sigma^2).

Every model has its own abar table: SD1/SD2/SDXL and ZeroScope train with the "scaled_linear"
beta schedule, AnimateDiff and AnimateLCM with "linear", so the same sigma is a different
timestep for each. Noise levels are handed between models as sigma and mapped to each model's
own timestep.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

BETA_SCHEDULES = ("scaled_linear", "linear")


def alphas_cumprod(
    beta_schedule: str = "scaled_linear",
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
    num_train_timesteps: int = 1000,
) -> torch.Tensor:
    """The cumulative alpha table (float64, length num_train_timesteps), as diffusers builds it."""
    if beta_schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    elif beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    else:
        raise ValueError(f"beta schedule must be one of {', '.join(BETA_SCHEDULES)}; got {beta_schedule!r}")
    return torch.cumprod(1.0 - betas, dim=0).to(torch.float64)


def alphas_from_config(config: dict) -> torch.Tensor:
    """The table of a diffusers scheduler config (scheduler_config.json), SD's values by default."""
    return alphas_cumprod(config.get("beta_schedule", "scaled_linear"), config.get("beta_start", 0.00085),
                          config.get("beta_end", 0.012), config.get("num_train_timesteps", 1000))


def sigma_of_alpha(alpha_bar) -> torch.Tensor:
    alpha_bar = torch.as_tensor(alpha_bar, dtype=torch.float64)
    return ((1.0 - alpha_bar) / alpha_bar).sqrt()


def timestep_of_sigma(table: torch.Tensor, sigma: float) -> float:
    """Fractional training timestep with noise level `sigma`, interpolating log-sigma linearly
    (as k-diffusion's DiscreteSchedule.sigma_to_t). Within 1e-3 of an integer it is rounded, so
    sigmas taken from the table map back to their exact timestep."""
    log_sigmas = sigma_of_alpha(table).log()
    if sigma <= 0:
        return 0.0
    log_sigma = math.log(sigma)
    high = int(torch.searchsorted(log_sigmas, torch.tensor([log_sigma], dtype=torch.float64)).item())
    high = min(max(high, 1), len(log_sigmas) - 1)
    low = high - 1
    w = (log_sigmas[high].item() - log_sigma) / (log_sigmas[high].item() - log_sigmas[low].item())
    w = min(max(w, 0.0), 1.0)
    t = (1.0 - w) * high + w * low
    return float(round(t)) if abs(t - round(t)) < 1e-3 else t


def nearest_timestep(table: torch.Tensor, sigma: float) -> int:
    """The integer training timestep whose sigma is closest to `sigma` (in log space)."""
    return int(round(timestep_of_sigma(table, sigma)))


def ddim_timesteps(steps: int, num_train_timesteps: int = 1000, spacing: str = "leading", offset: int = 1) -> list[int]:
    """Descending DDIM timesteps as diffusers' DDIMScheduler.set_timesteps makes them.

    SD's scheduler config uses "leading" spacing with steps_offset=1: 50 steps -> 981, 961, ..., 1,
    the same integers the WebUI's DDIM sampler uses.
    """
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps must be between 1 and {num_train_timesteps}; got {steps}")
    if spacing == "leading":
        ratio = num_train_timesteps // steps
        ts = [k * ratio + offset for k in range(steps)]
    elif spacing == "trailing":
        ratio = num_train_timesteps / steps
        ts = [round(num_train_timesteps - k * ratio) - 1 for k in range(steps)][::-1]
    elif spacing == "linspace":
        ts = [round((num_train_timesteps - 1) * k / (steps - 1)) if steps > 1 else 0 for k in range(steps)]
    else:
        raise ValueError(f"timestep spacing must be leading, trailing or linspace; got {spacing!r}")
    return sorted(ts, reverse=True)


def webui_ddim_timesteps(steps: int, num_train_timesteps: int = 1000) -> list[int]:
    """Descending timesteps of the WebUI's DDIM/PLMS samplers: range(0, 1000, 1000 // steps) + 1.

    That is `steps` values when 1000 is a multiple of `steps` (50 -> 981 ... 1, 49 updates) and one
    more otherwise (16 -> 993 ... 1 in steps of 62: 17 values, 16 updates).
    """
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps must be between 1 and {num_train_timesteps}; got {steps}")
    ts = [min(t + 1, num_train_timesteps - 1) for t in range(0, num_train_timesteps, num_train_timesteps // steps)]
    return sorted(ts, reverse=True)


@dataclass(frozen=True)
class SigmaSchedule:
    """What a sampler runs: model evaluations at sigmas[0..S-1], ending at sigmas[S].

    `clean_sigma` is the level a clean latent counts as when it is inverted: 0, or abar_0's sigma
    for schedulers configured with set_alpha_to_one=False (SD's DDIM config, the authors' choice).
    `requested_steps` is the step count the user asked for, which names the refine points. It can
    differ from the updates the sampler makes: the WebUI's DDIM with 50 steps makes 49.
    """

    sigmas: tuple[float, ...]
    clean_sigma: float = 0.0
    requested_steps: int | None = None

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    @property
    def reference_steps(self) -> int:
        return self.requested_steps or self.steps


def ddim_schedule(
    table: torch.Tensor,
    steps: int,
    spacing: str = "leading",
    offset: int = 1,
    set_alpha_to_one: bool = False,
    final_step: bool = True,
) -> SigmaSchedule:
    """Sigma schedule of a DDIM sampler.

    final_step=True is diffusers' DDIMScheduler: after the last timestep it steps to abar = 1
    (set_alpha_to_one) or abar_0. final_step=False is the WebUI's DDIM sampler, which stops at its
    last timestep (t = 1) and builds its timesteps its own way (`webui_ddim_timesteps`).
    """
    ts = ddim_timesteps(steps, len(table), spacing, offset) if final_step else webui_ddim_timesteps(steps, len(table))
    sigmas = [sigma_of_alpha(table[t]).item() for t in ts]
    clean = 0.0 if set_alpha_to_one else sigma_of_alpha(table[0]).item()
    if final_step:
        sigmas.append(clean)
    return SigmaSchedule(tuple(sigmas), clean_sigma=clean if final_step else 0.0, requested_steps=steps)


# ---------------------------------------------------------------------------------------------
# Refine points: "10%" is a fraction of the schedule, a bare integer "45" is the paper's
# "steps remaining" notation (refine at loop index S - 45), a number in (0, 1) is a fraction.


@dataclass(frozen=True)
class RefinePoint:
    fraction: float | None = None
    remaining: int | None = None

    def index(self, steps: int) -> int:
        if self.fraction is not None:
            return int(math.floor(self.fraction * steps + 0.5))
        return steps - self.remaining

    def __str__(self) -> str:
        if self.fraction is not None:
            return f"{self.fraction * 100:g}%"
        return str(self.remaining)


def parse_refine_points(value) -> tuple[RefinePoint, ...]:
    """Parse "10%,30%,50%,70%", "45,35,25,15", "0.1 0.3" or a list of such items."""
    if isinstance(value, str):
        items = [item for item in re.split(r"[,\s;]+", value.strip()) if item]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ValueError(f"refine points must be a string like '10%,30%,50%,70%' or a list; got {value!r}")
    if not items:
        raise ValueError("give at least one refine point, e.g. '10%,30%,50%,70%' or '45,35,25,15'")
    points = []
    for item in items:
        text = str(item).strip()
        try:
            if text.endswith("%"):
                fraction = float(text[:-1]) / 100.0
                if not 0.0 <= fraction < 1.0:
                    raise ValueError
                points.append(RefinePoint(fraction=fraction))
                continue
            number = float(text)
        except ValueError:
            raise ValueError(
                f"refine point {text!r} is not a percentage in [0%, 100%) or a whole number of steps remaining"
            ) from None
        if number.is_integer() and number >= 1:
            points.append(RefinePoint(remaining=int(number)))
        elif 0.0 <= number < 1.0:
            points.append(RefinePoint(fraction=number))
        else:
            raise ValueError(
                f"refine point {text!r} is not a percentage in [0%, 100%) or a whole number of steps remaining"
            )
    return tuple(points)


def refine_indices(points, sigmas, table: torch.Tensor, steps: int | None = None) -> tuple[int, ...]:
    """Sorted step indices to refine at, for a sampler with noise levels `sigmas` whose model has
    the abar `table`; `steps` is the step count the user asked for (default: len(sigmas) - 1).

    A point names a step of a DDIM schedule of `steps` steps (the paper's setting): "10%" is step
    round(0.1 S), "45" is step S - 45, so both notations name the same step. On the sampler's own
    schedule the refine happens at the step whose noise level is nearest to that DDIM step's, so
    Karras or exponential schedules, which spend most steps at low noise, refine at the same noise
    levels as DDIM, and the WebUI's DDIM (50 steps = 49 updates from t = 981) refines where
    diffusers' DDIM does. A refine at index i uses the prediction at sigma_i and hands the sampler a
    latent at sigma_{i+1}, so i <= len(sigmas) - 3.
    """
    if isinstance(points, str) or (points and not isinstance(points[0], RefinePoint)):
        points = parse_refine_points(points)
    updates = len(sigmas) - 1
    steps = steps or updates
    # The reference is the step count the user asked for, never the updates a sampler makes.
    reference = ddim_timesteps(steps, len(table)) if steps >= 1 else []
    log_sigmas = [math.log(s) if s > 0 else -math.inf for s in sigmas[: max(updates - 1, 0)]]
    indices = set()
    for point in points:
        k = point.index(steps)
        if not 0 <= k <= steps - 2 or not log_sigmas:
            raise ValueError(
                f"refine point {point} falls on step {k} of a {steps}-step schedule; it must be between "
                f"step 0 and step {steps - 2} (a refine needs one more step after it)"
            )
        target = math.log(sigma_of_alpha(table[reference[k]]).item())
        indices.add(min(range(len(log_sigmas)), key=lambda j: abs(log_sigmas[j] - target)))
    return tuple(sorted(indices))
