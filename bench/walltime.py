"""Wall time of a VideoElevator job against a plain T2I batch of the same frames and steps, on the
same models, in one run; the ratio the call counts predict; the overhead outside the UNets.

Per model size (tiny: the demo models; full: random-weight SD1.5 + ZeroScope v2 of the real sizes):
1. unit costs: median seconds of one UNet call of each kind the jobs make, the kinds taking turns
   after a warm-up round — T2I with CFG on 2F rows (main call, cross-frame attention), T2I on F rows
   (inversion and PnP, cross-frame), T2I with CFG on 2F rows without cross-frame attention (the
   plain batch), and one T2V call (one video of F frames, with CFG: 2F frame-evaluations);
2. the plain batch and the VideoElevator job, taking turns `--repeat` times (best kept), each timed
   end to end (prompt encoding, sampling, VAE decode), with forward hooks timing every UNet pass and
   timers on `encode_prompt` and `T2IModel.decode`.

Predicted ratio = (counts x unit costs of the job) / (counts x unit costs of the plain batch), two ways:
per frame-evaluation (the counts of bench.cost times one cost per frame-evaluation and model,
taken from the main call and the T2V call) and per call (each call kind at its own batch size).
Overhead, four ways (the work the cross-frame attention does inside the UNet counts as UNet time):
- outside every model forward pass (the issue's definition): the job as a user gets it, `generate`
  plus writing the frames as an MP4, minus the time inside the UNets, the text encoders and the VAE
  decoder, i.e. VideoElevator's own work (below) plus the video encoding;
- outside the UNets: job wall time minus the time inside the T2I and T2V UNet forward passes, i.e.
  prompt encoding (tokenizers + text encoders, `encode_prompt` of both models), the final VAE decode
  and VideoElevator's own work;
- added over the plain batch: that, minus the plain batch's own time outside its UNet (which also
  encodes prompts and decodes the frames): the extra prompt encodings (inversion prompt, the T2V
  model's prompts) plus VideoElevator's own work;
- own work: outside the UNets minus prompt encoding and VAE decode: low-pass filter and its FFTs,
  SDEdit noising, the DDIM / inversion / PnP arithmetic, CFG mixing, latent projection (none when the
  latent spaces agree, as here), copies, installing the cross-frame attention.

Run: .venv/bin/python -m bench.walltime          (tiny models, ~3 min on 2 cores)
     .venv/bin/python -m bench.walltime --full   (also the full-size models, ~10 more min on 2 cores)
On a CPU shared with other busy processes add --threads 1 (see bench.common.apply_threads).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

from bench import models
from bench.common import (
    NEGATIVE,
    PROMPT,
    Meters,
    add_threads_argument,
    apply_threads,
    machine,
    plain_batch,
    table,
)
from lib_elevator.cross_frame import cross_frame_attention
from lib_elevator.dtypes import resolve_device, resolve_dtype
from lib_elevator.noise import TorchNoise
from lib_elevator.settings import Settings
from lib_elevator.standalone import Job, generate, make_schedule
from lib_elevator.t2i import TextCondition
from lib_elevator.video_io import write_video

CONFIGS = {
    # the paper's ZeroScope settings at 64x64 px
    "tiny": dict(frames=16, steps=50, refine="10%,30%,50%,70%", t2v_steps=8, size=64, repeat=3, unit_rounds=20),
    # small enough for 2 CPU cores: every stage (main, T2V, inversion, PnP) still runs
    "full": dict(frames=8, steps=6, refine="10%,60%", t2v_steps=2, size=64, repeat=2, unit_rounds=2),
    # the paper's job on the full-size models, for a GPU (--paper; hours on a CPU)
    "paper": dict(frames=16, steps=50, refine="10%,30%,50%,70%", t2v_steps=8, size=512, repeat=2, unit_rounds=5),
}
MODELS = {"tiny": "tiny", "full": "full", "paper": "full"}  # which bench.models set a configuration runs on
OVERHEAD_TARGET, RATIO_TARGET = 0.02, 0.10


def seconds(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


@torch.no_grad()
def unit_costs(t2i, t2v, job: Job, settings: Settings, repeat: int) -> dict[str, float]:
    """Median seconds per UNet call of each kind. The kinds take turns (one warm-up round first), so a
    slow spell of a shared machine hits all of them alike."""
    F, device = settings.frames, t2i.device
    space = t2i.latent_space
    shape = (F, space.channels, job.height // space.downscale, job.width // space.downscale)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(device)
    sigma = make_schedule(job.schedule, t2i, job.steps).sigmas[job.steps // 2]
    cond = t2i.encode_prompt(job.prompt, job.height, job.width)
    uncond = t2i.encode_prompt(job.negative_prompt, job.height, job.width)
    cfg = t2i.denoiser(TextCondition.cat([uncond.repeat(F), cond.repeat(F)]))
    single = t2i.denoiser(cond.repeat(F))
    prompts = t2v.encode_prompt(job.prompt, job.negative_prompt)

    with_cross_frame = {
        "main": lambda: cfg(torch.cat([x, x]), sigma),
        "single": lambda: single(x, sigma),
    }
    without = {
        "plain": lambda: cfg(torch.cat([x, x]), sigma),
        "t2v": lambda: t2v.predict_noise(x, 500, prompts, settings.t2v_guidance),
    }
    times: dict[str, list[float]] = {name: [] for name in [*with_cross_frame, *without]}
    for round_ in range(repeat + 1):  # round 0 warms up
        with cross_frame_attention(t2i.unet, F, settings.anchor):  # switched outside the timed calls
            for name, call in with_cross_frame.items():
                elapsed = seconds(call, device)
                if round_:
                    times[name].append(elapsed)
        for name, call in without.items():
            elapsed = seconds(call, device)
            if round_:
                times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}


def timed_run(fn, device: torch.device):
    """(result, wall seconds, CPU seconds of this process)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def run_size(
    size: str, device: torch.device, dtype: torch.dtype, repeat: int | None, unit_rounds: int | None, cache: str
) -> dict:
    cfg = CONFIGS[size]
    F, repeat = cfg["frames"], repeat or cfg["repeat"]
    settings = Settings(frames=F, refine_points=cfg["refine"], t2v_steps=cfg["t2v_steps"]).validate()
    job = Job(PROMPT, NEGATIVE, cfg["size"], cfg["size"], cfg["steps"], 7.5, seed=0)
    t2i, t2v, load_s = models.load(MODELS[size], device=device, dtype=dtype, cache=cache)
    print(
        f"[{size}] {F} frames, {job.steps} steps, refine {cfg['refine']}, "
        f"N = {settings.t2v_steps}, {job.width}x{job.height} px, {device} {str(dtype).replace('torch.', '')}; "
        f"models loaded in {load_s:.1f} s",
        flush=True,
    )
    counts_params = models.parameter_counts(t2i, t2v)
    print("  parameters: " + ", ".join(f"{k} {v / 1e6:.4g}M" for k, v in counts_params.items()), flush=True)

    rounds = unit_rounds or cfg["unit_rounds"]
    units = unit_costs(t2i, t2v, job, settings, rounds)
    meters = Meters(t2i, t2v)
    load_before = os.getloadavg()[0]
    plain_runs, ve_runs = [], []

    def run_plain():
        return plain_batch(t2i, job, F, noise=TorchNoise(0))

    def run_job():
        return generate(t2i, t2v, job, settings, noise=TorchNoise(0), progress=meters.set_stage)

    for _ in range(repeat):  # alternate, so slow drifts of the machine hit both alike
        meters.reset()
        _, wall, cpu = timed_run(run_plain, device)
        plain_runs.append(
            dict(
                wall=wall,
                cpu=cpu,
                t2i=meters.t2i.seconds,
                text=sum(m.seconds for m in meters.text),
                decode=meters.decode.seconds,
                t2i_evals=meters.t2i.frame_evals,
                t2i_calls=meters.t2i.calls,
            )
        )
        meters.reset()
        result, wall, cpu = timed_run(run_job, device)
        with tempfile.TemporaryDirectory() as folder:  # what the user gets: the frames as an MP4
            began = time.perf_counter()
            write_video(result.frames, os.path.join(folder, "video"), formats=("MP4",), fps=8)
            encode = time.perf_counter() - began
        calls = result.calls
        refined_at = meters.refine_steps()
        ve_runs.append(
            dict(
                wall=wall,
                cpu=cpu,
                t2i=meters.t2i.seconds,
                t2v=meters.t2v.seconds,
                text=sum(m.seconds for m in meters.text),
                decode=meters.decode.seconds,
                encode=encode,
                t2i_evals=meters.t2i.frame_evals,
                t2v_evals=meters.t2v.frame_evals,
                calls=calls,
            )
        )
    load_after = os.getloadavg()[0]
    meters.remove()
    t2i = t2v = None  # free the models before the next size loads
    plain = min(plain_runs, key=lambda r: r["wall"])
    ve = min(ve_runs, key=lambda r: r["wall"])
    calls = ve["calls"]

    # predictions
    per_frame_t2i, per_frame_t2v = units["main"] / (2 * F), units["t2v"] / (2 * F)
    per_frame_plain = units["plain"] / (2 * F)
    predicted_frame = (ve["t2i_evals"] * per_frame_t2i + ve["t2v_evals"] * per_frame_t2v) / (
        plain["t2i_evals"] * per_frame_plain
    )
    ve_calls_time = (
        calls["t2i"] * units["main"]
        + (calls["inversion"] + calls["pnp"]) * units["single"]
        + calls["t2v"] * units["t2v"]
    )
    predicted_call = ve_calls_time / (plain["t2i_calls"] * units["plain"])
    measured = ve["wall"] / plain["wall"]
    measured_cpu = ve["cpu"] / plain["cpu"]

    unet_s = ve["t2i"] + ve["t2v"]
    overhead = ve["wall"] - unet_s
    own = overhead - ve["text"] - ve["decode"]
    # the overhead: time outside every model forward pass (UNets, text encoders, VAE) of the job
    # a user gets, i.e. generate + writing the MP4
    outside_models = (own + ve["encode"]) / (ve["wall"] + ve["encode"])
    plain_overhead = plain["wall"] - plain["t2i"]

    print(
        table(
            [f"unit cost (median of {rounds})", "seconds per call", "frame-evals per call", "seconds per frame-eval"],
            [
                ["T2I main call: CFG, cross-frame", f"{units['main']:.4f}", 2 * F, f"{units['main'] / (2 * F):.5f}"],
                ["T2I inversion / PnP call, cross-frame", f"{units['single']:.4f}", F, f"{units['single'] / F:.5f}"],
                [
                    "T2I plain call: CFG, no cross-frame",
                    f"{units['plain']:.4f}",
                    2 * F,
                    f"{units['plain'] / (2 * F):.5f}",
                ],
                ["T2V call: one video, CFG", f"{units['t2v']:.4f}", 2 * F, f"{units['t2v'] / (2 * F):.5f}"],
            ],
        )
    )
    print(
        table(
            [
                f"run (best of {repeat})",
                "wall s",
                "CPU s",
                "T2I UNet s",
                "T2V UNet s",
                "text enc s",
                "VAE dec s",
                "other s",
            ],
            [
                [
                    "plain T2I batch",
                    f"{plain['wall']:.2f}",
                    f"{plain['cpu']:.2f}",
                    f"{plain['t2i']:.2f}",
                    "-",
                    f"{plain['text']:.3f}",
                    f"{plain['decode']:.3f}",
                    f"{plain_overhead - plain['text'] - plain['decode']:.3f}",
                ],
                [
                    "VideoElevator job",
                    f"{ve['wall']:.2f}",
                    f"{ve['cpu']:.2f}",
                    f"{ve['t2i']:.2f}",
                    f"{ve['t2v']:.2f}",
                    f"{ve['text']:.3f}",
                    f"{ve['decode']:.3f}",
                    f"{own:.3f}",
                ],
            ],
        )
    )
    print(
        f"  refined after the main call of loop steps {refined_at}; "
        f"frame-evals: job T2I {ve['t2i_evals']} + T2V {ve['t2v_evals']} (calls {calls}); "
        f"plain T2I {plain['t2i_evals']}"
    )
    in_job, in_plain = ve["t2i"] / ve["t2i_evals"], plain["t2i"] / plain["t2i_evals"]
    print(
        f"  T2I UNet seconds per frame-eval inside the runs: job (cross-frame, 2F- and F-row calls) {in_job:.5f}, "
        f"plain batch {in_plain:.5f} ({in_job / in_plain - 1:+.1%})"
    )
    print(
        f"  ratio job / plain: measured {measured:.2f}x wall ({measured_cpu:.2f}x CPU time); predicted "
        f"{predicted_frame:.2f}x from frame-eval counts x per-frame-eval costs "
        f"(off by {measured / predicted_frame - 1:+.1%}), {predicted_call:.2f}x from call counts x per-call costs "
        f"(off by {measured / predicted_call - 1:+.1%})"
    )
    added = overhead - plain_overhead
    print(
        f"  overhead outside the UNets: {overhead:.2f} s = {overhead / ve['wall']:.2%} of the job "
        f"(prompt encoding {ve['text']:.2f} s, VAE decode {ve['decode']:.2f} s, VideoElevator's own work {own:.2f} s "
        f"= {own / ve['wall']:.2%}); plain batch: {plain_overhead:.2f} s = {plain_overhead / plain['wall']:.2%}; "
        f"added by the job over the plain batch: {added:.2f} s = {added / ve['wall']:.2%} of the job"
    )
    print(
        f"  outside every model forward pass (UNets, text encoders, VAE decode), with the MP4 encoding "
        f"({ve['encode']:.2f} s) added to the job: {own + ve['encode']:.2f} s = {outside_models:.2%} of "
        f"{ve['wall'] + ve['encode']:.2f} s"
    )
    print(f"  load average (1 min) before/after the timed runs: {load_before:.2f} / {load_after:.2f}\n", flush=True)
    return dict(
        size=size,
        device=device,
        measured=measured,
        predicted_frame=predicted_frame,
        predicted_call=predicted_call,
        overhead=overhead / ve["wall"],
        own=own / ve["wall"],
        outside_models=outside_models,
        added=added / ve["wall"],
        ve_wall=ve["wall"],
        plain_wall=plain["wall"],
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.walltime", description=__doc__.split("\n\n")[0])
    p.add_argument("--full", action="store_true", help="also run the full-size models (built once, ~11 GB)")
    p.add_argument("--only-full", action="store_true", help="run only the full-size models")
    p.add_argument("--paper", action="store_true", help="also the paper's job (16 frames, 512 px, 50 steps): for a GPU")
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (auto: cuda when available)")
    p.add_argument("--dtype", default="auto", help="float32, float16, ... (auto: float16 on cuda, else float32)")
    p.add_argument("--repeat", type=int, default=None, help="timed repetitions (default: 3 tiny, 2 full)")
    p.add_argument("--unit-rounds", type=int, default=None, help="rounds of unit-cost calls (default: 20 tiny, 2 full)")
    p.add_argument("--cache", default=models.CACHE, help="folder of the benchmark models")
    add_threads_argument(p)
    args = p.parse_args(argv)
    apply_threads(args.threads)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores\n")
    sizes = ["full"] if args.only_full else (["tiny", "full"] if args.full else ["tiny"])
    if args.paper:
        sizes = [*sizes, "paper"]
    results = [run_size(size, device, dtype, args.repeat, args.unit_rounds, args.cache) for size in sizes]

    rows = []
    for r in results:
        off = r["measured"] / r["predicted_frame"] - 1
        rows.append(
            [
                f"{r['size']} ({r['device']})",
                f"{r['plain_wall']:.1f}",
                f"{r['ve_wall']:.1f}",
                f"{r['measured']:.2f}x",
                f"{r['predicted_frame']:.2f}x ({off:+.1%}: {'met' if abs(off) <= RATIO_TARGET else 'not met'})",
                f"{r['predicted_call']:.2f}x",
                f"{r['overhead']:.2%}",
                f"{r['added']:.2%}",
                f"{r['own']:.2%}",
                f"{r['outside_models']:.2%}",
            ]
        )
    if device.type != "cuda":
        rows.append(["GPU", "", "", "", "", "", "", "", "", ""])
    print(
        table(
            [
                "models",
                "plain s",
                "job s",
                "measured ratio",
                "predicted (per frame-eval)",
                "predicted (per call)",
                "outside UNets",
                "added over plain",
                "own work",
                "outside model passes (+MP4)",
            ],
            rows,
            "Summary (targets: measured ratio within 10 % of the predicted; overhead <= 2 % of a full-size job)",
        )
    )
    for r in results:
        if r["size"] in ("full", "paper"):
            verdict = {
                k: "met" if r[k] <= OVERHEAD_TARGET else "not met"
                for k in ("overhead", "added", "own", "outside_models")
            }
            print(
                f"overhead target on the full-size job: outside every model forward pass, MP4 encoding included "
                f"{r['outside_models']:.2%} ({verdict['outside_models']}); VideoElevator's own work {r['own']:.2%} "
                f"({verdict['own']}); all time outside the UNets {r['overhead']:.2%} ({verdict['overhead']}); "
                f"added over the plain batch {r['added']:.2%} ({verdict['added']})"
            )
    if device.type != "cuda":
        print("GPU: none on this machine, not measured (run with --device cuda on a GPU machine).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
