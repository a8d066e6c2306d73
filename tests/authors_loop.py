"""The authors' sampling loop, re-stated in our words as a test oracle (not their code).

It follows the published VideoElevator pipeline (DDPM form, diffusers' DDIMScheduler /
DDIMInverseScheduler with SD's config, a DDIM video scheduler on the T2I's step grid), including
what this project does differently by default (docs/algorithm.md):
- their cross-frame processor splits every UNet batch into two halves, each anchored on its first
  row: the CFG batch [uncond F, cond F] gets the intended groups, the un-guided inversion batch of F
  rows gets two groups of F/2 frames;
- the inversion is conditioned on the negative-prompt half of their embeddings;
- SDEdit noises the clean prediction to the T2I's timestep t_i on the video model's table, then
  takes its steps on the video scheduler's grid from index i;
and the evaluations that turn out to be unnecessary:
- a PnP call at every step while an inversion trajectory has more than one latent left, also at
  a refine step, whose result the refine then replaces;
- the first PnP call after each inversion evaluates exactly the latent the main call just did;
- every PnP call is a full cond+uncond batch, combined with guidance 1.0.

The standalone pipeline with compat="authors" must equal it (tests/test_standalone_loop.py), with
fewer evaluations; the cost benchmark runs it to count the authors' evaluations.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from lib_elevator.cross_frame import cross_frame_attention
from lib_elevator.filters import FilterSpec, temporal_lowpass
from lib_elevator.noise import NoiseSource
from lib_elevator.t2i import T2IModel, TextCondition
from lib_elevator.t2v.base import T2VBackend


def _ddim(cls, t2i: T2IModel, steps: int):
    cfg = t2i.scheduler_config
    scheduler = cls(
        num_train_timesteps=cfg.get("num_train_timesteps", 1000),
        beta_start=cfg.get("beta_start", 0.00085),
        beta_end=cfg.get("beta_end", 0.012),
        beta_schedule=cfg.get("beta_schedule", "scaled_linear"),
        set_alpha_to_one=cfg.get("set_alpha_to_one", False),
        steps_offset=cfg.get("steps_offset", 1),
        clip_sample=False,
        prediction_type=t2i.prediction_type,
    )
    scheduler.set_timesteps(steps)
    # diffusers keeps abar in float32; use the model's float64 table so float64 runs compare exactly
    scheduler.alphas_cumprod = t2i.alphas_cumprod.clone()
    clean = torch.tensor(1.0, dtype=torch.float64) if cfg.get("set_alpha_to_one", False) else t2i.alphas_cumprod[0]
    scheduler.final_alpha_cumprod = scheduler.initial_alpha_cumprod = clean
    return scheduler


def authors_loop_for(
    t2i: T2IModel, t2v: T2VBackend, job, settings, steps_remaining: list[int], noise: NoiseSource, on_step=None
):
    """`authors_loop` with a standalone `Job` and `Settings` (the refine points as steps remaining)."""
    return authors_loop(
        t2i,
        t2v,
        prompt=job.prompt,
        negative_prompt=job.negative_prompt,
        frames=settings.frames,
        height=job.height,
        width=job.width,
        steps=job.steps,
        guidance=job.guidance,
        steps_remaining=steps_remaining,
        t2v_steps=settings.t2v_steps,
        t2v_guidance=settings.t2v_guidance,
        alpha=settings.noise_mix,
        filter_spec=dataclasses.replace(settings.filter_spec(), convention="authors"),
        pnp=settings.pnp,
        noise=noise,
        on_step=on_step,
    )


@torch.no_grad()
def authors_loop(
    t2i: T2IModel,
    t2v: T2VBackend,
    *,
    prompt: str,
    negative_prompt: str,
    frames: int,
    height: int,
    width: int,
    steps: int,
    guidance: float,
    steps_remaining: list[int],
    t2v_steps: int,
    t2v_guidance: float,
    alpha: float,
    filter_spec: FilterSpec,
    pnp: bool,
    noise: NoiseSource,
    on_step=None,
) -> tuple[torch.Tensor, dict[str, int]]:
    """Returns the final DDPM-form latents (F, C, h, w) and the UNet rows evaluated per model.
    `on_step(i, latents)` sees the latents at the end of every loop iteration."""
    from diffusers import DDIMInverseScheduler, DDIMScheduler

    rows = {"t2i": 0, "t2v": 0}

    def unet(latents, t, cond):
        rows["t2i"] += latents.shape[0]
        attention.frames = latents.shape[0] // 2  # their processor: two anchor groups per batch
        return t2i.model_output(latents, float(t), cond).to(latents.dtype)

    scheduler, inverse = _ddim(DDIMScheduler, t2i, steps), _ddim(DDIMInverseScheduler, t2i, steps)
    c, h, w = t2i.latent_space.channels, height // 8, width // 8
    cond = t2i.encode_prompt(prompt, height, width).repeat(frames)
    uncond = t2i.encode_prompt(negative_prompt, height, width).repeat(frames)
    both = TextCondition.cat([uncond, cond])
    t2v_prompts = t2v.encode_prompt(prompt, negative_prompt)
    t2v_table, t2v_stride = t2v.alphas_cumprod, len(t2v.alphas_cumprod) // steps  # the video grid = the T2I grid

    base, residual = noise.randn((1, c, h, w)), noise.randn((frames, c, h, w))
    scale = (1 + alpha**2) ** -0.5
    work = torch.float64 if t2i.dtype == torch.float64 else torch.float32
    latents = (base * (alpha * scale) + residual * scale).to(t2i.device, work)

    def guided_eps(x, t, weight):
        uncond_eps, cond_eps = unet(torch.cat([x, x]), t, both).chunk(2)
        return uncond_eps + weight * (cond_eps - uncond_eps)

    def invert(clean, count):
        inverse_rows = uncond  # the authors invert with the negative-prompt half of their embeddings
        x, trajectory = clean, []
        for t in inverse.timesteps[:count].tolist():
            x = inverse.step(unet(x, t, inverse_rows), t, x).prev_sample
            trajectory.append(x)
        return x, trajectory

    trajectory: list[torch.Tensor] = []
    with cross_frame_attention(t2i.unet, frames) as attention:
        for i, t in enumerate(scheduler.timesteps.tolist()):
            eps = guided_eps(latents, t, guidance)
            step = scheduler.step(eps, t, latents)
            predicted_clean, latents = step.pred_original_sample, step.prev_sample
            if pnp and len(trajectory) > 1:
                inverted = trajectory.pop()
                replayed = scheduler.step(guided_eps(inverted, t, 1.0), t, inverted).prev_sample
                latents = latents + (trajectory[-1] - replayed)
            if steps - i in steps_remaining:
                if steps - i > steps_remaining[-1]:
                    predicted_clean = temporal_lowpass(predicted_clean, filter_spec)
                a = t2v_table[t].item()
                draw = noise.randn(tuple(predicted_clean.shape)).to(predicted_clean.device, work)
                video = math.sqrt(a) * predicted_clean + math.sqrt(1 - a) * draw
                clean = predicted_clean
                for k in range(t2v_steps):
                    v_t = t - k * t2v_stride
                    rows["t2v"] += video.shape[0] * (2 if t2v_guidance != 1.0 else 1)
                    v_eps = t2v.predict_noise(video, v_t, t2v_prompts, t2v_guidance)
                    a_t = t2v_table[v_t].item()
                    a_prev = t2v_table[v_t - t2v_stride].item() if v_t - t2v_stride >= 0 else t2v_table[0].item()
                    clean = (video - math.sqrt(1 - a_t) * v_eps) / math.sqrt(a_t)
                    video = math.sqrt(a_prev) * clean + math.sqrt(1 - a_prev) * v_eps
                latents, trajectory = invert(clean, steps - i - 1)
            if on_step is not None:
                on_step(i, latents)
    return latents, rows
