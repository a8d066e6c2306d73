"""The standalone VideoElevator pipeline: diffusers models, a DDIM loop in sigma space, the core.

This is the reference implementation the WebUI adapter is checked against, the engine of the CLI
and of the `--demo` run. The loop is DDIM (eta = 0), which in k-diffusion form is an Euler step
x_{i+1} = x_i + (sigma_{i+1} - sigma_i) * (x_i - D(x_i)) / sigma_i, with D the guided clean
prediction of the T2I model whose self-attention is cross-frame attention.

Against the authors' loop it makes no wasted evaluations (same output): no PnP call at a refine
step (the refine replaces that step's result), and the first PnP call after a refine reuses the
cond half of the main call (both see the same latent at the same level).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from lib_elevator.cross_frame import FrameChunks, auto_frame_chunk, cross_frame_attention, grouped
from lib_elevator.elevator import RefinePlan, Refiner, latent_projectors, plan_refinement, t2v_windows
from lib_elevator.inversion import euler_step, pnp_correction
from lib_elevator.latent_space import diffusers_codec
from lib_elevator.noise import NoiseSource, TorchNoise, mixed_noise
from lib_elevator.schedule import SigmaSchedule, ddim_schedule
from lib_elevator.settings import Settings, SettingsError
from lib_elevator.t2i import T2IModel, TextCondition
from lib_elevator.t2v.base import T2VBackend

SCHEDULES = ("diffusers-ddim", "webui-ddim")


@dataclass(frozen=True)
class Job:
    """What to generate (the settings say how to elevate it)."""

    prompt: str
    negative_prompt: str = ""
    width: int = 512
    height: int = 512
    steps: int = 50
    guidance: float = 7.5
    seed: int = 0
    # "diffusers-ddim": diffusers' DDIMScheduler with the model's config (the authors' sampler);
    # "webui-ddim": the WebUI's DDIM sampler (its own timesteps, stops at t=1; 50 steps -> 49 calls).
    schedule: str = "diffusers-ddim"


@dataclass
class VideoResult:
    frames: np.ndarray  # (F, H, W, 3) uint8
    latents: torch.Tensor  # (F, C, h, w), DDPM form, as decoded
    calls: dict[str, int] = field(default_factory=dict)  # model evaluations by stage (one per batch call)


def make_schedule(name: str, t2i: T2IModel, steps: int) -> SigmaSchedule:
    cfg = t2i.scheduler_config
    if name == "diffusers-ddim":
        return ddim_schedule(
            t2i.alphas_cumprod,
            steps,
            cfg.get("timestep_spacing", "leading"),
            cfg.get("steps_offset", 1),
            cfg.get("set_alpha_to_one", False),
            final_step=True,
        )
    if name == "webui-ddim":
        return ddim_schedule(t2i.alphas_cumprod, steps, final_step=False)
    raise SettingsError("schedule", f"must be one of {', '.join(SCHEDULES)}; got {name!r}")


@contextlib.contextmanager
def t2i_off_device(t2i: T2IModel):
    """Move the T2I UNet and text encoders to the CPU (and back): room for the T2V model."""
    device, modules = t2i.device, [t2i.unet, *t2i.text_encoders]
    for module in modules:
        module.to("cpu")
    if device.type == "cuda":
        torch.cuda.empty_cache()
    try:
        yield
    finally:
        for module in modules:
            module.to(device)


def check_job(job: Job, t2i: T2IModel, settings: Settings) -> None:
    down = t2i.latent_space.downscale
    for name, size in (("width", job.width), ("height", job.height)):
        if size < down or size % down:
            raise SettingsError(name, f"must be a positive multiple of {down}; got {size}")
    if job.steps < 2:
        raise SettingsError("steps", f"must be at least 2; got {job.steps}")
    settings.validate()


def generate(
    t2i: T2IModel,
    t2v: T2VBackend,
    job: Job,
    settings: Settings,
    *,
    noise: NoiseSource | None = None,
    progress: Callable[[str], None] | None = None,
    on_plan: Callable[[RefinePlan], None] | None = None,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
    offload_t2v: bool = False,
) -> VideoResult:
    """One video. `progress(stage)` runs before every model evaluation ("t2i", "t2v", "inversion",
    "pnp"); `on_plan(plan)` once, after the settings were checked and before any model runs
    (`plan.total_calls(settings)` is the number of `progress` calls to come); `on_step(i, latents)`
    after every step i with the DDPM-form latents the loop continues from."""
    check_job(job, t2i, settings)
    schedule = make_schedule(job.schedule, t2i, job.steps)
    plan = plan_refinement(settings, schedule, t2i.alphas_cumprod, t2v.noise_level_table, t2v.sampler)
    t2v_windows(settings, t2v)
    if on_plan is not None:
        on_plan(plan)
    noise = noise or TorchNoise(job.seed)
    calls = {"t2i": 0, "t2v": 0, "inversion": 0, "pnp": 0}

    def before_call(stage: str):
        calls[stage] += 1
        if progress is not None:
            progress(stage)

    frames, device = settings.frames, t2i.device
    latent_shape = (
        t2i.latent_space.channels,
        job.height // t2i.latent_space.downscale,
        job.width // t2i.latent_space.downscale,
    )

    # Text conditioning: main CFG rows are [uncond x F, cond x F], two groups of F frames.
    cond = t2i.encode_prompt(job.prompt, job.height, job.width)
    # An empty negative prompt (and the "empty" inversion prompt) is SDXL's zeros, as in diffusers.
    uncond = t2i.encode_prompt(job.negative_prompt, job.height, job.width, negative=True)
    inversion_text = job.negative_prompt if settings.inverts_with_negative_prompt else ""
    guided = job.guidance > 1.0
    chunk = settings.frame_chunk or auto_frame_chunk(frames, 2 if guided else 1, latent_shape[1] * latent_shape[2],
                                                      torch.device(device), t2i.dtype)
    chunks = FrameChunks(frames, chunk, settings.anchor) if chunk < frames else None
    main = t2i.denoiser(
        TextCondition.cat([uncond.repeat(frames), cond.repeat(frames)]) if guided else cond.repeat(frames), chunks
    )
    cond_only = t2i.denoiser(cond.repeat(frames), chunks)
    inversion_cond = (
        uncond
        if inversion_text == job.negative_prompt
        else t2i.encode_prompt(inversion_text, job.height, job.width, negative=True)
    )
    invert = t2i.denoiser(inversion_cond.repeat(frames), chunks)
    if t2v.fps is not None:
        t2v.fps = settings.t2v_fps
    t2v_prompts = t2v.encode_prompt(
        settings.t2v_prompt or job.prompt, settings.t2v_negative_prompt or job.negative_prompt, device
    )

    to_t2v, to_t2i = latent_projectors(diffusers_codec(t2i.vae), t2i.latent_space, t2v, settings.latent_projection)
    refiner = Refiner(
        t2v,
        settings,
        plan,
        t2v_prompts,
        noise,
        to_t2v=to_t2v,
        to_t2i=to_t2i,
        before_call=before_call,
        device=device,
        offload=offload_t2v,
        make_room=lambda: t2i_off_device(t2i),
    )

    sigmas = schedule.sigmas
    # DDPM-form unit noise, as diffusers' DDIM starts from; k-form is x_ddpm * sqrt(1 + sigma_0^2)
    work = torch.float64 if t2i.dtype == torch.float64 else torch.float32
    x = mixed_noise(noise, frames, latent_shape, settings.noise_mix).to(device, work) * math.sqrt(1.0 + sigmas[0] ** 2)
    trajectory: dict[float, torch.Tensor] = {}
    with torch.no_grad(), cross_frame_attention(t2i.unet, frames, settings.anchor, chunks) as attention:
        if settings.inversion_anchor_groups > 1:
            invert = grouped(invert, attention, frames // settings.inversion_anchor_groups)
        for i in range(schedule.steps):
            sigma, sigma_next = sigmas[i], sigmas[i + 1]
            before_call("t2i")
            if guided:
                denoised_uncond, denoised_cond = main(torch.cat([x, x]), sigma).chunk(2)
                denoised = denoised_uncond + job.guidance * (denoised_cond - denoised_uncond)
            else:
                denoised = denoised_cond = main(x, sigma)

            if i in plan.refine_at:  # temporal motion refining replaces this step's update
                trajectory = refiner.refine(i, denoised, invert)
                x = trajectory[sigma_next]
                if on_step is not None:
                    on_step(i, x / math.sqrt(1.0 + sigma_next**2))
                continue

            x_next = euler_step(x, denoised, sigma, sigma_next)
            if settings.pnp and sigma in trajectory and sigma_next in trajectory:
                inverted = trajectory[sigma]
                if inverted is not x:  # right after a refine x *is* the inverted latent: reuse the cond half
                    before_call("pnp")
                    denoised_cond = cond_only(inverted, sigma)
                x_next = pnp_correction(x_next, inverted, trajectory[sigma_next], denoised_cond, sigma, sigma_next)
            x = x_next
            if on_step is not None:
                on_step(i, x / math.sqrt(1.0 + sigma_next**2))

    latents = x / math.sqrt(1.0 + sigmas[-1] ** 2)
    images = t2i.decode(latents)
    return VideoResult((images.numpy() * 255).round().astype(np.uint8), latents.cpu(), calls)
