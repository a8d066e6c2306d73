"""One VideoElevator job inside the WebUI, from the Script hooks' point of view.

Frames are the batch of a txt2img job (p.batch_size = frames; batch count = videos). The Script
hooks call the functions at the bottom of this file:

    before_process                parse and check the arguments, set the batch size, wrap p.sample
    process_before_every_sampling mix the initial noise, patch attention, wrap the sampler function,
                                  then load the T2V model and encode its prompts (all I/O happens
                                  here, before the sampler's first step)
    (sampler function)            `plan` maps the refine points onto the sampler's schedule; the
                                  segmented sampler calls `refine` and the PnP hooks
    postprocess_batch             write the video of this batch
    postprocess                   report the videos (UI gallery, API info)

Exceptions raised inside script hooks are swallowed by the host, so nothing that can fail on bad
input runs there unguarded: an error while preparing replaces the sampler function with one that
raises it at once (the host does not sample a whole job first), and our `p.sample` wrapper turns
user errors into a message for the UI or an HTTP 422 for the API. The same wrapper's `finally`
removes every patch, whatever happens (success, error, interrupt, skip).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import torch
from modules import devices, prompt_parser, sd_samplers_common, shared

from lib_elevator.cross_frame import FrameChunks, auto_frame_chunk
from lib_elevator.elevator import Refiner, latent_projectors, plan_refinement, t2v_windows
from lib_elevator.errors import UserError
from lib_elevator.noise import TorchNoise, mix_noise
from lib_elevator.webui import compat, hosts, models, outputs, xyz
from lib_elevator.webui.args import INFOTEXT_KEY, ElevatorArgs, from_positional, is_enabled, to_infotext, with_overrides
from lib_elevator.webui.refusal import VideoElevatorError, log, user_error
from lib_elevator.webui.sampler_hook import TIMESTEPS, HostSchedule, RefineHooks, segmented

JOB_ATTR = "_videoelevator_job"
SEGMENTED = "_videoelevator_segmented"  # marks a sampler function we wrapped


class WebUIJob(RefineHooks):
    def __init__(self, p, parsed: ElevatorArgs, model: dict):
        self.p, self.parsed, self.settings, self.model = p, parsed, parsed.settings, model
        self.frames = parsed.settings.frames
        self.pnp = parsed.settings.pnp
        self.host = hosts.current()
        self.cross_frames: list = []  # cross-frame attention of each sampling pass (removed in release)
        self.latent_shape = None  # (frames, C, h, w) of the first pass
        self.chunks: FrameChunks | None = None  # frames per UNet call, when fewer than all
        self.hook_error: BaseException | None = None  # an error of a script hook, raised from p.sample
        self.sampled = False  # the wrapped sampler function ran in this job
        self.videos: list = []  # WrittenVideo per batch
        # Prepared before the sampler starts (prepare):
        self.noise: TorchNoise | None = None  # the job's draws: the shared base noise, then every SDEdit draw
        self.t2v = None  # the loaded T2V backend
        self.t2v_prompts = None  # its PromptPair
        self.to_t2v = self.to_t2i = None  # latent projections, when the two latent spaces differ
        self.empty_cond = None  # the empty prompt's conditioning rows (inversion_prompt "empty")
        # Set when the sampler function starts (plan/on_run):
        self.refine_plan = None
        self.refiner: Refiner | None = None
        self.host_schedule: HostSchedule | None = None
        self.extra_done = 0  # model evaluations of ours so far (progress)
        # What the host's CFG denoiser saw (on_cfg_denoiser/on_cfg_denoised), for inversion and PnP:
        self.captured_cfg = None  # its inputs of its latest call
        self.captured_cond: list = []  # (cond rows in, cond rows out, in k-form?) of its latest calls

    # ------------------------------------------------------------------------ sampling setup
    def before_every_sampling(self, x: torch.Tensor) -> None:
        p, host = self.p, self.host
        if getattr(p, "is_hr_pass", False):
            # hires fix: the frames are upscaled as one batch, with cross-frame attention again (Forge
            # calls this twice for the hires pass; each call patches a fresh clone, the last one is used)
            self.cross_frames.append(self.patch_unet())
            return
        if x.shape[0] != self.frames:
            raise VideoElevatorError(f"the batch has {x.shape[0]} latents, expected {self.frames} frames")
        if getattr(p.sampler.func, SEGMENTED, False):
            # a host calling this hook twice for one sampler: the noise is mixed and the sampler wrapped
            # already; only the patch goes on again, on whatever UNet (clone) will sample now
            self.cross_frames.append(self.patch_unet())
            return
        # The model is checked here, not in before_process: a checkpoint override (and Forge's first
        # load) happens between the two hooks.
        host.check_model(p)
        self.latent_shape = tuple(x.shape)
        self.noise = TorchNoise(int(p.seeds[0]))
        base = self.noise.randn((1, *x.shape[1:])).to(x.device, x.dtype)
        x.copy_(mix_noise(base, x, self.settings.noise_mix))  # in place: this tensor goes to the sampler
        chunk = self.settings.frame_chunk or auto_frame_chunk(self.frames, 2, x.shape[2] * x.shape[3], x.device,
                                                              x.dtype)
        self.chunks = FrameChunks(self.frames, chunk, self.settings.anchor) if chunk < self.frames else None
        self.cross_frames.append(self.patch_unet())
        p.sampler.func = segmented(p.sampler.func, self, host.alphas_cumprod(p), on_run=self.on_run)
        setattr(p.sampler.func, SEGMENTED, True)
        self.prepare()

    def patch_unet(self):
        return self.host.patch_unet(self.p, self.frames, self.settings.anchor, self.seen_cond_output, self.chunks)

    def prepare(self) -> None:
        """Everything that reads files or runs a text encoder, before the sampler's first step."""
        state, p, host = shared.state, self.p, self.host
        state.textinfo = f"VideoElevator: loading {self.model['name']}"
        if state.interrupted or state.skipped:
            return  # the sampler stops at its first call
        self.t2v = models.get_t2v(self.model)
        t2v_windows(self.settings, self.t2v)  # a window the model cannot take is refused before sampling
        if self.t2v.fps is not None:
            self.t2v.fps = self.settings.t2v_fps
        state.textinfo = "VideoElevator: encoding prompts"
        self.t2v_prompts = self.t2v.encode_prompt(
            plain_text(self.settings.t2v_prompt or self.p.prompts[0]),
            plain_text(self.settings.t2v_negative_prompt or self.p.negative_prompts[0]),
            devices.device,
        )
        self.to_t2v, self.to_t2i = latent_projectors(host.codec(p), host.latent_space(p), self.t2v,
                                                     self.settings.latent_projection)
        if not self.settings.inverts_with_negative_prompt:
            self.empty_cond = host.empty_condition(p, self.frames)
        state.textinfo = None

    # ------------------------------------------------------------------------ RefineHooks
    def plan(self, schedule):
        """Map the refine points onto the schedule the sampler got (pure: everything it needs was
        prepared before sampling)."""
        self.sampled = True
        if self.t2v is None:  # interrupted while preparing: the host keeps what it has
            raise sd_samplers_common.InterruptedException
        # The refine points name steps of a DDIM schedule with the step count the user asked for.
        schedule = dataclasses.replace(schedule, requested_steps=self.p.steps)
        self.refine_plan = plan_refinement(self.settings, schedule,
                                           self.host.alphas_cumprod(self.p).detach().double().cpu(),
                                           self.t2v.noise_level_table, self.t2v.sampler)
        self.refiner = Refiner(self.t2v, self.settings, self.refine_plan, self.t2v_prompts, self.noise,
                               to_t2v=self.to_t2v, to_t2i=self.to_t2i, before_call=self.before_call,
                               device=devices.device, offload=models.offload_wanted(),
                               make_room=lambda: self.host.make_room(self.p, self.latent_shape))
        return self.refine_plan

    def on_run(self, schedule: HostSchedule, plan) -> None:
        self.host_schedule = schedule
        shared.state.sampling_steps = schedule.steps + plan.extra_calls(self.settings)
        self.extra_done = 0

    def before_call(self, stage: str) -> None:
        state = shared.state
        if state.interrupted or state.skipped:
            raise sd_samplers_common.InterruptedException
        self.extra_done += 1
        state.sampling_step += 1
        state.textinfo = f"VideoElevator: {stage}"

    def host_step(self, index: int) -> None:
        shared.state.sampling_step = index + self.extra_done

    def _text_rows(self, which: str):
        params = self.captured_cfg
        if params is None:
            raise VideoElevatorError("the host's CFG denoiser was not seen before the first refine step")
        rows = self.frames
        cond_image = params.image_cond[:rows]
        if which == "cond":
            return params.text_cond, cond_image
        if self.settings.inverts_with_negative_prompt:
            return params.text_uncond, params.image_cond[rows : 2 * rows] if params.image_cond.shape[0] >= 2 * rows \
                else cond_image
        return self.empty_cond, cond_image

    def refine(self, index: int, denoised: torch.Tensor) -> dict:
        text, image = self._text_rows("inversion")
        invert = self.host.denoiser(self.p, text, image)
        groups = self.settings.inversion_anchor_groups
        if groups > 1:  # compat="authors": their inversion anchors frames F/2.. on frame F/2
            invert = grouped_calls(invert, self.cross_frames[-1], self.frames // groups)
        return self.refiner.refine(index, denoised.float(), invert)

    def cond_denoised(self, latent: torch.Tensor, sigma: float) -> torch.Tensor:
        self.before_call("pnp")
        text, image = self._text_rows("cond")
        return self.host.denoiser(self.p, text, image)(latent, sigma)

    def reused_cond_denoised(self, schedule: HostSchedule, position: int, host_x: torch.Tensor):
        """The host's own cond prediction at `position` when its input was exactly `host_x`."""
        for x_in, out, k_form in reversed(self.captured_cond):
            if k_form:  # Forge: its input in k-form and x0 out; for DDIM it rescaled x in float32 itself
                x_k = schedule.to_k(host_x, position)
                if x_in.shape == x_k.shape and torch.allclose(x_in, x_k.to(x_in), rtol=1e-5, atol=0):
                    return out.float()
                continue
            if x_in.shape == host_x.shape and torch.equal(x_in, host_x):
                if schedule.family != TIMESTEPS:
                    return out.float()
                sigma = schedule.sigmas[position]  # DDIM/PLMS: the host's output is eps, x is DDPM form
                x_k = host_x * math.sqrt(1.0 + sigma**2)
                return x_k - sigma * out.float()
        return None

    # ------------------------------------------------------------------------ CFG callbacks
    def seen_cfg(self, params) -> None:
        self.captured_cfg = params

    def seen_denoised(self, params) -> None:
        cfg = self.captured_cfg
        if cfg is None or cfg.x.shape[0] < self.frames:
            return
        self.captured_cond = [*self.captured_cond[-1:], (cfg.x[: self.frames], params.x[: self.frames], False)]

    def seen_cond_output(self, x_k: torch.Tensor, cond_x0: torch.Tensor) -> None:
        """Forge's post-CFG report (it has no on_cfg_denoised): the call's input and cond x0."""
        if x_k.shape[0] == self.frames and cond_x0.shape[0] == self.frames:
            self.captured_cond = [*self.captured_cond[-1:], (x_k, cond_x0, True)]

    # ------------------------------------------------------------------------ clean-up
    def release(self) -> None:
        for cross_frame in self.cross_frames:
            cross_frame.remove()
        self.cross_frames = []
        if str(shared.state.textinfo or "").startswith("VideoElevator"):
            shared.state.textinfo = None
        self.captured_cfg, self.captured_cond = None, []
        if models.offload_wanted() and self.t2v is not None:
            self.t2v.to("cpu")
        devices.torch_gc()


def grouped_calls(denoise, cross_frame, group: int):
    """`denoise` with anchor groups of `group` rows in the patched attention during its calls."""

    def run(x, sigma):
        with cross_frame.grouped(group):
            return denoise(x, sigma)

    return run


def plain_text(prompt: str) -> str:
    """A WebUI prompt as plain text for the T2V text encoder: attention weights like (word:1.2)
    removed (LoRA tags are already gone from p.prompts)."""
    return "".join(text for text, _ in prompt_parser.parse_prompt_attention(prompt or "")).strip()


# ---------------------------------------------------------------------------------- Script hooks


def job_of(p):
    return getattr(p, JOB_ATTR, None)


def before_process(p, args) -> None:
    host = hosts.current()
    host.clean_leftovers()  # of a crashed job
    # The X/Y/Z plot's cells share one extra_generation_params: a cell without VideoElevator must not
    # carry the previous cell's infotext.
    p.extra_generation_params.pop(INFOTEXT_KEY, None)
    axes = xyz.overrides(p)  # X/Y/Z plot axis values of this cell
    if not is_enabled(args) and not axes.get("enable"):
        return
    try:
        parsed = with_overrides(args, axes) if axes else from_positional(args)
        if not parsed.enable:
            return
        compat.check_job(p.sampler_name, p.prompt, p.negative_prompt, getattr(p, "refiner_checkpoint", None),
                         getattr(p, "hr_prompt", None) if getattr(p, "enable_hr", False) else None)
        hosts.check_supported(host)
        model = models.resolve(parsed.t2v_model)
    except UserError as error:
        fail_job(p, error)
        return
    job = WebUIJob(p, parsed, model)
    setattr(p, JOB_ATTR, job)
    p.batch_size = parsed.settings.frames
    p.do_not_save_grid = True
    p.extra_generation_params[INFOTEXT_KEY] = to_infotext(parsed)
    wrap_sample(p, job)


def fail_job(p, error: BaseException) -> None:
    def refuse(*args, **kwargs):
        raise user_error(p, error)

    p.sample = refuse


def wrap_sample(p, job: WebUIJob) -> None:
    original = p.sample

    def sample(*args, **kwargs):
        try:
            result = original(*args, **kwargs)
        except UserError as error:  # bad settings or model files, found before any sampler step
            raise user_error(p, error) from error
        except Exception as error:
            if error is job.hook_error:  # raised by the sampler function a failed hook replaced
                raise VideoElevatorError(f"VideoElevator: {error}") from error
            raise
        finally:
            job.release()
        if job.hook_error is not None:
            raise VideoElevatorError(f"VideoElevator: {job.hook_error}") from job.hook_error
        if not job.sampled and not (shared.state.interrupted or shared.state.skipped):
            raise VideoElevatorError("VideoElevator could not attach to the sampler; nothing was refined")
        return result

    p.sample = sample


def process_before_every_sampling(p, x) -> None:
    job = job_of(p)
    if job is None:
        return
    try:
        job.before_every_sampling(x)
    except Exception as error:  # the host would swallow it: stop the sampler at once and let p.sample raise it
        if not isinstance(error, UserError):
            log.exception("VideoElevator could not prepare sampling")
        job.hook_error = error
        sampler = getattr(p, "sampler", None)
        if sampler is not None:
            sampler.func = refusing(sampler.func, error)


def refusing(func, error: BaseException):
    """A sampler function that raises `error` instead of sampling (keeps the signature the host inspects)."""

    @functools.wraps(func)
    def run(*args, **kwargs):
        raise error

    return run


def postprocess_batch(p, images, batch_number: int) -> None:
    job = job_of(p)
    if job is None or images is None:
        return
    frames = (images.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    job.videos.append(outputs.write_batch(p, job.settings, frames, batch_number))


def postprocess(p, processed) -> None:
    job = job_of(p)
    if job is None:
        return
    outputs.report(p, processed, job.videos)


# ---------------------------------------------------------------------------------- CFG callbacks
# Global host callbacks, gated by job identity. `on_cfg_denoised` carries no reference to its job,
# but it fires later in the same CFG-denoiser call as `on_cfg_denoiser`, so the job seen there is
# remembered for it.
_job_in_cfg_call: WebUIJob | None = None


def on_cfg_denoiser(params) -> None:
    global _job_in_cfg_call
    _job_in_cfg_call = job_of(getattr(params.denoiser, "p", None))
    if _job_in_cfg_call is not None:
        _job_in_cfg_call.seen_cfg(params)


def on_cfg_denoised(params) -> None:
    global _job_in_cfg_call
    if _job_in_cfg_call is not None:
        _job_in_cfg_call.seen_denoised(params)
    _job_in_cfg_call = None
