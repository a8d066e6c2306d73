"""The refine orchestrator: temporal motion refining at one step (docs/algorithm.md, step 3).

Given the T2I model's clean prediction at step i (sigma_i) it returns the latent the T2I sampler
continues from at sigma_{i+1}:

    low-pass filter over time (not at the last refine step)
    -> project into the T2V latent space (only when the spaces differ)
    -> SDEdit with the T2V model: noise to the T2V timestep matching sigma_i, N steps
    -> project back
    -> DDIM-invert with the T2I denoiser up to sigma_{i+1}

The T2I denoiser comes in as a callable, so the WebUI adapter and the standalone pipeline share
this code unchanged. Nothing here knows about a host.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from lib_elevator.dtypes import working_dtype
from lib_elevator.filters import temporal_lowpass
from lib_elevator.inversion import Denoiser, ddim_invert, inversion_path
from lib_elevator.latent_space import LatentProjector, LatentSpace, VaeCodec, diffusers_codec, needs_projection
from lib_elevator.noise import NoiseSource
from lib_elevator.schedule import SigmaSchedule, nearest_timestep, refine_indices
from lib_elevator.settings import Settings, SettingsError
from lib_elevator.t2v.base import PromptPair, T2VBackend

# before_call(stage) runs before every model evaluation: progress, interrupt checks.
BeforeCall = Callable[[str], None]


@dataclass(frozen=True)
class RefinePlan:
    """Where and how a job refines, fixed before sampling starts (so bad settings fail early)."""

    schedule: SigmaSchedule
    refine_at: tuple[int, ...]
    t2v_start: dict[int, int]  # refine index -> T2V timestep SDEdit noises to
    t2v_timesteps: dict[int, tuple[int, ...]]  # refine index -> the T2V model's steps, from the start down
    inversion_paths: dict[int, list[float]]  # refine index -> ascending sigmas, clean -> sigma_{i+1}
    # refine index -> a noise draw after the last T2V step, made and not used (the authors' LCM scheduler
    # draws one whenever its grid goes on; drawing it too keeps every later draw in their order)
    t2v_unused_draw: dict[int, bool] = dataclasses.field(default_factory=dict)

    def is_last(self, index: int) -> bool:
        return index == self.refine_at[-1]

    def t2v_calls(self, t2v_steps: int) -> int:
        return t2v_steps * len(self.refine_at)

    def inversion_calls(self) -> int:
        return sum(len(path) - 1 for path in self.inversion_paths.values())

    def pnp_calls(self) -> int:
        """PnP evaluations after the refines: one per later step whose two levels are both on the
        inversion trajectory, less the first one after each refine (it reuses the main call)."""
        sigmas, count = self.schedule.sigmas, 0
        for k, i in enumerate(self.refine_at):
            stop = self.refine_at[k + 1] if k + 1 < len(self.refine_at) else self.schedule.steps
            levels = set(self.inversion_paths[i][1:])
            count += sum(1 for j in range(i + 2, stop) if sigmas[j] in levels and sigmas[j + 1] in levels)
        return count

    def extra_calls(self, settings: Settings) -> int:
        """Model evaluations beyond the sampler's own steps: T2V steps, inversion, PnP."""
        return self.t2v_calls(settings.t2v_steps) + self.inversion_calls() + (self.pnp_calls() if settings.pnp else 0)

    def total_calls(self, settings: Settings) -> int:
        return self.schedule.steps + self.extra_calls(settings)


def lcm_grid(steps: int, train_steps: int = 1000, original_steps: int = 50) -> list[int]:
    """The timesteps of diffusers' LCMScheduler for `steps` steps (its default 50-step origin grid
    999, 979, ..., 19, picked at floor(j * 50 / steps)): the grid the authors' AnimateLCM script steps on."""
    if not 1 <= steps <= original_steps:
        raise SettingsError("steps", f"the authors' AnimateLCM grid takes at most {original_steps} steps; got {steps}")
    ratio = train_steps // original_steps
    origin = [ratio * k - 1 for k in range(original_steps, 0, -1)]
    return [origin[j * original_steps // steps] for j in range(steps)]


def plan_refinement(settings: Settings, schedule: SigmaSchedule, t2i_alphas_cumprod: torch.Tensor,
                    t2v_alphas_cumprod: torch.Tensor, t2v_sampler: str = "ddim") -> RefinePlan:
    """Map the refine points onto `schedule` (by noise level, see `schedule.refine_indices`) and
    check that every refine point leaves room for the T2V steps. `t2v_sampler` is the T2V model's
    ("ddim" or "lcm"). Raises SettingsError naming the field at fault."""
    try:
        refine_at = refine_indices(
            settings.refine_points, schedule.sigmas, t2i_alphas_cumprod, schedule.reference_steps
        )
    except ValueError as e:
        raise SettingsError("refine_points", str(e)) from None
    train_steps = len(t2v_alphas_cumprod)
    authors = settings.compat == "authors"
    # The authors' T2V grid has as many steps as the T2I schedule; ours is fixed (stride 20 by default).
    grid_steps = schedule.reference_steps if authors else settings.t2v_grid_steps
    stride = max(1, train_steps // grid_steps)
    starts, timesteps, paths, unused_draws = {}, {}, {}, {}
    for i in refine_at:
        if authors:  # their SDEdit noises to the T2I's timestep t_i on the T2V table, whatever its noise level
            start = min(nearest_timestep(t2i_alphas_cumprod, schedule.sigmas[i]), train_steps - 1)
        else:  # the T2V timestep with the noise level the T2I sampler is at
            start = nearest_timestep(t2v_alphas_cumprod, schedule.sigmas[i])
        starts[i] = start
        if authors and t2v_sampler == "lcm":
            # their AnimateLCM steps on the LCM scheduler's grid from the T2I's step index i
            grid = lcm_grid(schedule.reference_steps, train_steps)
            if i + settings.t2v_steps > len(grid):
                raise SettingsError(
                    "t2v_steps", f"{settings.t2v_steps} T2V steps from step {i} run past the end of the "
                    f"{len(grid)}-step LCM grid; lower the T2V steps or refine earlier",
                )
            timesteps[i] = tuple(grid[i : i + settings.t2v_steps])
            unused_draws[i] = i + settings.t2v_steps < len(grid)
        else:
            room = start // stride + 1
            if settings.t2v_steps > room:
                raise SettingsError(
                    "t2v_steps",
                    f"{settings.t2v_steps} T2V steps do not fit after the refine point at step {i} of "
                    f"{schedule.steps} (T2V timestep {start}: room for {room} steps of {stride}); lower the T2V "
                    "steps or refine earlier",
                )
            timesteps[i] = tuple(start - k * stride for k in range(settings.t2v_steps))
        paths[i] = inversion_path(schedule.sigmas, i + 1, schedule.clean_sigma, settings.inversion_steps or None)
    return RefinePlan(schedule, refine_at, starts, timesteps, paths, unused_draws)


def latent_projectors(t2i_codec: VaeCodec, t2i_space: LatentSpace, t2v: T2VBackend, mode: str = "auto"):
    """(to_t2v, to_t2i) projections between the two latent spaces, or (None, None) when they agree."""
    if not needs_projection(t2i_space, t2v.latent_space, mode):
        return None, None
    if t2v.vae is None:
        raise SettingsError(
            "t2v_model", f"the T2V model {t2v.name} has no VAE, which is needed to project latents between the "
            "image model's latent space and its own"
        )
    to_t2v = LatentProjector(t2i_codec, t2i_space, diffusers_codec(t2v.vae), t2v.latent_space)
    return to_t2v, to_t2v.reverse()


def t2v_windows(settings: Settings, t2v: T2VBackend) -> tuple[int, int]:
    """(window, overlap) of the T2V model's calls for this job; SettingsError when the model cannot take
    that many frames at once (a motion module's positions)."""
    window, overlap = settings.t2v_windows(t2v.native_frames)
    if t2v.max_frames is not None and min(window, settings.frames) > t2v.max_frames:
        field = "t2v_window" if settings.t2v_window else "frames"
        raise SettingsError(field, f"{t2v.name or t2v.kind} takes at most {t2v.max_frames} frames at once; "
                                   f"set the T2V window to {t2v.max_frames} or less")
    return window, overlap


class Refiner:
    """Runs the refine steps of one video.

    `to_t2v`/`to_t2i` project latents between the two latent spaces (None when they agree).
    With `offload`, the T2V model sits on the CPU between refine steps and visits `device` only for
    its SDEdit steps, while `make_room()` (a context manager from the caller) moves the T2I model
    off the device, so the peak is the larger model, not both.
    """

    def __init__(
        self,
        t2v: T2VBackend,
        settings: Settings,
        plan: RefinePlan,
        prompts: PromptPair,
        noise: NoiseSource,
        *,
        to_t2v=None,
        to_t2i=None,
        before_call: BeforeCall | None = None,
        device: torch.device | None = None,
        offload: bool = False,
        make_room=contextlib.nullcontext,
    ):
        self.t2v, self.settings, self.plan, self.prompts, self.noise = t2v, settings, plan, prompts, noise
        self.to_t2v, self.to_t2i = to_t2v, to_t2i
        self.before_call = before_call or (lambda stage: None)
        self.device, self.offload, self.make_room = device, offload, make_room
        self.filter_spec = settings.filter_spec()

    @contextlib.contextmanager
    def _t2v_on_device(self):
        if not self.offload:
            yield
            return
        with self.make_room():
            self.t2v.to(self.device)
            try:
                yield
            finally:
                self.t2v.to("cpu")

    def refine_clean(self, index: int, denoised: torch.Tensor) -> torch.Tensor:
        """Steps 3b-3e: the refined clean latent (F, C, h, w) in the T2I latent space."""
        clean = denoised.to(working_dtype(denoised))
        if not self.plan.is_last(index):
            clean = temporal_lowpass(clean, self.filter_spec)
        if self.to_t2v is not None:
            clean = self.to_t2v(clean)
        window, overlap = t2v_windows(self.settings, self.t2v)
        with self._t2v_on_device():
            clean = self.t2v.denoise(
                clean,
                self.plan.t2v_start[index],
                self.plan.t2v_timesteps[index],
                self.prompts,
                self.settings.t2v_guidance,
                self.noise,
                before_call=lambda: self.before_call("t2v"),
                unused_draw=self.plan.t2v_unused_draw.get(index, False),
                window=window,
                overlap=overlap,
            )
        if self.to_t2i is not None:
            clean = self.to_t2i(clean)
        return clean.to(denoised.device, denoised.dtype)

    def refine(self, index: int, denoised: torch.Tensor, invert: Denoiser) -> dict[float, torch.Tensor]:
        """denoised: the T2I clean prediction at step `index`, (F, C, h, w), k-diffusion/x0 form.
        invert: the un-guided T2I denoiser used for the inversion (step 3f).
        Returns the inversion trajectory {sigma: latent}; the latent at sigma_{index+1} is the
        sampler's new state, the rest serves the PnP correction."""
        clean = self.refine_clean(index, denoised)
        return ddim_invert(
            clean, self.plan.inversion_paths[index], invert, before_call=lambda: self.before_call("inversion")
        )
