"""Shared pieces of the benchmarks: model-call meters (forward hooks), a plain T2I batch, tables."""

from __future__ import annotations

import math
import os
import time

import torch

from lib_elevator.inversion import euler_step
from lib_elevator.noise import NoiseSource, TorchNoise
from lib_elevator.standalone import Job, make_schedule
from lib_elevator.t2i import T2IModel, TextCondition

# Nothing may reach a model hub.
for _name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DIFFUSERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
    os.environ.setdefault(_name, "1")

PROMPT, NEGATIVE = "a lighthouse in a storm, waves crashing", "blurry, low quality"


def _sync(tensor) -> None:
    if isinstance(tensor, torch.Tensor) and tensor.is_cuda:
        torch.cuda.synchronize(tensor.device)


def _sync_all() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class Meter:
    """Counts and times the forward passes of one module, with hooks (nothing in the module changes).

    `frame_evals` counts batch rows of the first input; for a video UNet (input (B, C, F, h, w)) a row
    is a whole video, so it counts B * F frames. Evaluations are attributed to `self.stage`, which a
    caller may set between calls. With `keep_inputs`, a copy of each input and its timestep is kept.
    """

    def __init__(self, module: torch.nn.Module, video: bool = False, keep_inputs: bool = False):
        self.module, self.video, self.keep_inputs = module, video, keep_inputs
        self.stage = "all"
        self.reset()
        self._handles = [
            module.register_forward_pre_hook(self._pre, with_kwargs=True),
            module.register_forward_hook(self._post, with_kwargs=True),
        ]

    def reset(self) -> None:
        self.calls, self.frame_evals, self.seconds = 0, 0, 0.0
        self.by_stage: dict[str, int] = {}
        self.log: list[tuple[int, float, torch.Tensor | None]] = []  # (frame evals, timestep, input)

    def _pre(self, module, args, kwargs):
        sample = args[0] if args else next(iter(kwargs.values()))
        evals = sample.shape[0] * (sample.shape[2] if self.video and sample.ndim == 5 else 1)
        self.calls += 1
        self.frame_evals += evals
        self.by_stage[self.stage] = self.by_stage.get(self.stage, 0) + evals
        if self.keep_inputs:
            timestep = args[1] if len(args) > 1 else kwargs.get("timestep")
            self.log.append((evals, float(timestep), sample.detach().clone()))
        _sync(sample)
        self._started = time.perf_counter()

    def _post(self, module, args, kwargs, output):
        _sync(getattr(output, "sample", output) if not isinstance(output, tuple) else output[0])
        self.seconds += time.perf_counter() - self._started

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


class MethodTimer:
    """Times every call of one method of one object (an instance attribute shadows the method while
    the timer is on; `remove` takes it away again)."""

    def __init__(self, owner, name: str):
        self.owner, self.name = owner, name
        method = getattr(owner, name)

        def timed(*args, **kwargs):
            _sync_all()
            started = time.perf_counter()
            result = method(*args, **kwargs)
            _sync_all()
            self.seconds += time.perf_counter() - started
            self.calls += 1
            return result

        setattr(owner, name, timed)
        self.reset()

    def reset(self) -> None:
        self.calls, self.seconds = 0, 0.0

    def remove(self) -> None:
        delattr(self.owner, self.name)


class Meters:
    """Meters on a T2I/T2V pair: the two UNets (forward hooks), prompt encoding (tokenizer and text
    encoder: `encode_prompt` of both models) and VAE decoding (`T2IModel.decode`)."""

    def __init__(self, t2i: T2IModel, t2v=None, keep_inputs: bool = False):
        self.t2i = Meter(t2i.unet, keep_inputs=keep_inputs)
        self.t2v = Meter(t2v.unet, video=True) if t2v is not None else None
        self.text = [MethodTimer(t2i, "encode_prompt")]
        if t2v is not None:
            self.text.append(MethodTimer(t2v, "encode_prompt"))
        self.decode = MethodTimer(t2i, "decode")
        self.stages: list[str] = []

    def all(self) -> list:
        return [m for m in (self.t2i, self.t2v, *self.text, self.decode) if m is not None]

    def set_stage(self, stage: str) -> None:
        """`generate`'s progress callback: names the stage of the model call about to happen."""
        self.t2i.stage = stage
        self.stages.append(stage)

    def refine_steps(self) -> list[int]:
        """Loop indices where the last job refined: the main call before each block of T2V calls."""
        steps, main_calls = [], 0
        for before, stage in zip(["t2i"] + self.stages, self.stages):
            main_calls += stage == "t2i"
            if stage == "t2v" and before != "t2v":
                steps.append(main_calls - 1)
        return steps

    def unet_seconds(self) -> float:
        return self.t2i.seconds + (self.t2v.seconds if self.t2v is not None else 0.0)

    def reset(self) -> None:
        self.stages: list[str] = []
        for meter in self.all():
            meter.reset()

    def remove(self) -> None:
        for meter in self.all():
            meter.remove()


@torch.no_grad()
def plain_batch(
    t2i: T2IModel, job: Job, frames: int, noise: NoiseSource | None = None, decode: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A plain T2I batch of `frames` images: the same DDIM schedule, steps and CFG as `generate`, no
    cross-frame attention, no refining. Returns (DDPM-form latents, decoded images or None)."""
    schedule = make_schedule(job.schedule, t2i, job.steps)
    noise = noise or TorchNoise(job.seed)
    cond = t2i.encode_prompt(job.prompt, job.height, job.width)
    uncond = t2i.encode_prompt(job.negative_prompt, job.height, job.width)
    guided = job.guidance > 1.0
    main = t2i.denoiser(
        TextCondition.cat([uncond.repeat(frames), cond.repeat(frames)]) if guided else cond.repeat(frames)
    )
    space, sigmas = t2i.latent_space, schedule.sigmas
    shape = (frames, space.channels, job.height // space.downscale, job.width // space.downscale)
    work = torch.float64 if t2i.dtype == torch.float64 else torch.float32
    x = noise.randn(shape).to(t2i.device, work) * math.sqrt(1.0 + sigmas[0] ** 2)
    for i in range(schedule.steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        if guided:
            denoised_uncond, denoised_cond = main(torch.cat([x, x]), sigma).chunk(2)
            denoised = denoised_uncond + job.guidance * (denoised_cond - denoised_uncond)
        else:
            denoised = main(x, sigma)
        x = euler_step(x, denoised, sigma, sigma_next)
    latents = x / math.sqrt(1.0 + sigmas[-1] ** 2)
    return latents, (t2i.decode(latents) if decode else None)


def table(headers: list[str], rows: list[list], title: str | None = None) -> str:
    """A plain-text table (also valid Markdown)."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[k]) for r in cells) for k in range(len(headers))]

    def line(row):
        return "| " + " | ".join(c.rjust(w) if k else c.ljust(w) for k, (c, w) in enumerate(zip(row, widths))) + " |"

    out = [line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in cells[1:]]
    text = "\n".join(out)
    return f"{title}\n\n{text}\n" if title else text + "\n"


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = f"{names[0]} x{len(names)}" if names else cpu
    except OSError:
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, torch {torch.__version__} ({torch.get_num_threads()} threads), {gpu}"


def add_threads_argument(parser, default: int | None = None) -> None:
    parser.add_argument(
        "--threads",
        type=int,
        default=default,
        help="torch CPU threads (default: %s)" % (default or "torch's default, one per core"),
    )


def apply_threads(threads: int | None) -> None:
    """On a CPU shared with other busy processes, more threads than free cores make every small
    operation wait for a descheduled thread (an order of magnitude slower); one thread avoids that."""
    if threads:
        torch.set_num_threads(threads)
