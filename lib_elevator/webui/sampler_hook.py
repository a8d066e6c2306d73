"""Running the WebUI's sampler function in segments, so VideoElevator can replace its latent.

The host calls `p.sampler.func(model, x, extra_args=..., callback=..., disable=..., sigmas=... |
timesteps=..., ...)`. We replace `func` (an instance attribute; `functools.wraps` keeps the
signature the host inspects) with a wrapper that runs the original on slices of the schedule:

    steps [0, i]   -> the denoised prediction at step i (from the callback)
    refine         -> the latent at sigma_{i+1}
    steps [i+1, .] -> one step at a time while the PnP correction applies, then the rest

Samplers without state between steps (Euler, Euler a, Heun, DPM2, DPM++ 2S a, DPM++ SDE, LCM,
DDIM, DDIM CFG++) give exactly the unsplit result when nothing is replaced; their noise keeps
flowing from the same generators. Sigma churn (Settings > Sampler parameters) is scaled to each
slice, since k-diffusion derives its per-step churn from the length of the schedule it is given. Multistep samplers (DPM++ 2M/3M, LMS, PLMS) restart their
history at a segment boundary, which is right after a replaced latent and costs a little accuracy
on the PnP one-step segments. Second-order samplers spend their second evaluation of a refine
step on a latent that the refine replaces.

Two families of host samplers, one schedule view: position j = 0..S with noise level sigma_j.
- k-diffusion: x is k-form (x0 + sigma * eps), slices of `sigmas`;
- timesteps (DDIM, PLMS): x is DDPM form at integer timesteps, ascending `timesteps`; position j
  is timesteps[n-1-j]; x_k = x_ddpm * sqrt(1 + sigma^2).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from lib_elevator.inversion import pnp_correction
from lib_elevator.schedule import SigmaSchedule, sigma_of_alpha

KDIFFUSION, TIMESTEPS = "k-diffusion", "timesteps"


@dataclass
class HostSchedule:
    """The host's schedule as the sampler function got it."""

    family: str
    sigmas: tuple[float, ...]
    raw: torch.Tensor  # the sigmas or timesteps tensor as passed

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    def sigma_schedule(self) -> SigmaSchedule:
        # k-diffusion ends at sigma 0; the timesteps samplers stop at their smallest timestep.
        return SigmaSchedule(self.sigmas, clean_sigma=0.0)

    def slice_kwargs(self, start: int, stop: int) -> dict:
        if self.family == KDIFFUSION:
            return {"sigmas": self.raw[start : stop + 1]}
        n = len(self.raw)
        return {"timesteps": self.raw[n - 1 - stop : n - start]}

    def to_k(self, x: torch.Tensor, position: int) -> torch.Tensor:
        if self.family == KDIFFUSION:
            return x
        return x * math.sqrt(1.0 + self.sigmas[position] ** 2)

    def from_k(self, x: torch.Tensor, position: int) -> torch.Tensor:
        if self.family == KDIFFUSION:
            return x
        return x / math.sqrt(1.0 + self.sigmas[position] ** 2)


def host_schedule(kwargs: dict, alphas_cumprod: torch.Tensor) -> HostSchedule:
    if "sigmas" in kwargs:
        raw = kwargs["sigmas"]
        return HostSchedule(KDIFFUSION, tuple(float(s) for s in raw.tolist()), raw)
    if "timesteps" in kwargs:
        raw = kwargs["timesteps"]
        table = alphas_cumprod.detach().double().cpu()
        ascending = [sigma_of_alpha(table[int(t)]).item() for t in raw.tolist()]
        return HostSchedule(TIMESTEPS, tuple(reversed(ascending)), raw)
    raise RuntimeError("VideoElevator cannot segment this sampler: it takes neither sigmas nor timesteps")


class RefineHooks:
    """What the segmenter needs from a job (implemented by the WebUI job; stubs in tests)."""

    pnp: bool = True

    def plan(self, schedule: SigmaSchedule):
        """Return an object with `.refine_at` (sorted step indices); raise on bad settings."""
        raise NotImplementedError

    def refine(self, index: int, denoised: torch.Tensor) -> dict[float, torch.Tensor]:
        """Inversion trajectory {sigma: k-form latent} after refining at step `index`."""
        raise NotImplementedError

    def cond_denoised(self, latent: torch.Tensor, sigma: float) -> torch.Tensor:
        """Cond-only clean prediction (PnP)."""
        raise NotImplementedError

    def reused_cond_denoised(self, schedule: HostSchedule, position: int, host_x: torch.Tensor):
        """The cond prediction the host's own call at `position` just made on `host_x`, or None."""
        return None

    def host_step(self, index: int) -> None:
        """After the host's callback for step `index` (progress bookkeeping)."""


def segmented(func: Callable, hooks: RefineHooks, alphas_cumprod: torch.Tensor, on_run: Callable | None = None):
    """Wrap a host sampler function so it refines at the planned steps."""

    @functools.wraps(func)
    def run(model, x, *args, callback=None, extra_args=None, disable=None, **kwargs):
        schedule = host_schedule(kwargs, alphas_cumprod)
        plan = hooks.plan(schedule.sigma_schedule())
        if on_run is not None:
            on_run(schedule, plan)
        base_kwargs = {k: v for k, v in kwargs.items() if k not in ("sigmas", "timesteps")}
        churn = float(kwargs.get("s_churn") or 0.0)
        denoised_at: dict[int, torch.Tensor] = {}

        def segment(x_host, start: int, stop: int):
            """Host steps start..stop-1; returns the host-form latent at position `stop`."""
            slice_kwargs = dict(base_kwargs, **schedule.slice_kwargs(start, stop))
            if churn:
                # k-diffusion's Euler/Heun/DPM2 raise sigma by gamma = min(s_churn / (len(sigmas) - 1),
                # sqrt(2) - 1): scaled to the slice, every step keeps the gamma of the unsplit run.
                slice_kwargs["s_churn"] = churn * (stop - start) / schedule.steps

            def step_callback(d):
                index = start + d["i"]
                denoised_at[index] = d["denoised"]
                if callback is not None:
                    callback({**d, "i": index})
                hooks.host_step(index)

            return func(model, x_host, *args, callback=step_callback, extra_args=extra_args, disable=True,
                        **slice_kwargs)

        position, x_host = 0, x
        refine_at = list(plan.refine_at)
        for k, i in enumerate(refine_at):
            x_host = segment(x_host, position, i + 1)
            trajectory = hooks.refine(i, denoised_at[i])
            position = i + 1
            x_k = trajectory[schedule.sigmas[position]]
            stop = refine_at[k + 1] if k + 1 < len(refine_at) else schedule.steps
            if hooks.pnp:
                x_k, position = pnp_steps(x_k, position, stop, trajectory, schedule, segment, hooks)
            x_host = schedule.from_k(x_k, position)
        if position < schedule.steps:
            x_host = segment(x_host, position, schedule.steps)
        return x_host

    return run


def pnp_steps(x_k, position, stop, trajectory, schedule: HostSchedule, segment, hooks: RefineHooks):
    """One-step segments with the PnP correction while the trajectory covers both levels."""
    first = position
    while position < stop:
        sigma, sigma_next = schedule.sigmas[position], schedule.sigmas[position + 1]
        if sigma not in trajectory or sigma_next not in trajectory:
            break
        x_in_host = schedule.from_k(x_k, position)
        stepped = schedule.to_k(segment(x_in_host, position, position + 1), position + 1)
        inverted = trajectory[sigma]
        denoised = hooks.reused_cond_denoised(schedule, position, x_in_host) if position == first else None
        if denoised is None:
            denoised = hooks.cond_denoised(inverted, sigma)
        x_k = pnp_correction(stepped, inverted, trajectory[sigma_next], denoised, sigma, sigma_next)
        position += 1
    return x_k, position
