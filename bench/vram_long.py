"""Peak VRAM of long videos (16/32/64/128 frames at 512x512), estimated on a CPU with the simulated GPU.

The same machinery as `bench.vram` (the real standalone job, float16 SD1.5 + ZeroScope v2 architectures
without data, bytes counted op by op), with what makes long videos fit: the image model denoises 8
frames per UNet call sharing the anchor (`frame_chunk`), the T2V model refines windows of 16 frames
overlapping by 4 (`t2v_window`, `t2v_overlap`), the T2V model is offloaded between refine steps and the
VAE decodes 4 frames a call. Each job is short (steps and T2V steps below), so the simulation stays
affordable; the peaks come from single model calls, whose size does not depend on the step count
(`bench.vram`: 6 steps are within 0.07 GiB of 50). Also printed: the model cost per frame, counted on the UNet
calls (frame-evaluations), and the CPU wall time per frame of a tiny-model job
at each length: the T2V windows' overlaps add a bounded share, so the cost per frame stays flat.

Run: .venv/bin/python -m bench.vram_long                 (~15 min on 2 cores)
     .venv/bin/python -m bench.vram_long --frames 16 64   (a subset)
"""

from __future__ import annotations

import argparse
import time

import torch

from bench.common import NEGATIVE, PROMPT, machine, table
from bench.simulated_gpu import DEVICE, SimulatedGpu
from bench.vram import CARD_GIB, GIB, STAGE_NAMES, STAGES, build_models, gib, run_job
from lib_elevator.filters import _fft_order_mask
from lib_elevator.settings import Settings
from lib_elevator.standalone import Job

CHUNK, WINDOW, OVERLAP = 8, 16, 4


def long_settings(frames: int, t2v_steps: int) -> Settings:
    return Settings(frames=frames, refine_points="50%", t2v_steps=t2v_steps, frame_chunk=CHUNK, t2v_window=WINDOW,
                    t2v_overlap=OVERLAP).validate()


def counter(seen: dict, key: str):
    """A forward pre-hook adding the frames of each call to `seen[key]` (4-D: rows; 5-D video: B x F)."""

    def hook(module, args):
        x = args[0]
        seen[key] += x.shape[0] * (x.shape[2] if x.dim() == 5 else 1)

    return hook


def tiny_wall_time(frames: int, steps: int, t2v_steps: int) -> float:
    """Seconds per frame of a tiny-model job on the CPU (lib_elevator.tiny), the same settings."""
    import os
    import tempfile

    from lib_elevator.loaders import load_t2i
    from lib_elevator.standalone import generate
    from lib_elevator.t2v.registry import load_t2v
    from lib_elevator.tiny.t2i import build_tiny_t2i_folder
    from lib_elevator.tiny.t2v import build_tiny_zeroscope_folder

    root = os.path.join(tempfile.gettempdir(), "videoelevator-bench-long")
    t2i = load_t2i(build_tiny_t2i_folder(os.path.join(root, "sd1"), kind="sd1"))
    t2v = load_t2v(build_tiny_zeroscope_folder(os.path.join(root, "zs")))
    job = Job(PROMPT, NEGATIVE, 64, 64, steps, 7.5, seed=0)
    start = time.perf_counter()
    generate(t2i, t2v, job, long_settings(frames, t2v_steps))
    return (time.perf_counter() - start) / frames


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.vram_long", description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, nargs="+", default=[16, 32, 64, 128])
    p.add_argument("--size", type=int, default=512, help="width = height in px")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--t2v-steps", type=int, default=2)
    p.add_argument("--dtype", default="float16")
    args = p.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    job = Job(PROMPT, NEGATIVE, args.size, args.size, args.steps, 7.5, seed=0)
    print(f"machine: {machine()}")
    print(f"simulated GPU (bench.simulated_gpu), {args.dtype}; job: {args.size}x{args.size} px, {args.steps} steps, "
          f"refine at 50 %, N = {args.t2v_steps}, T2I {CHUNK} frames a call, T2V windows of {WINDOW} overlapping "
          f"by {OVERLAP}, T2V offloaded, VAE 4 frames a call\n", flush=True)
    rows, cost_rows = [], []
    with SimulatedGpu().active() as sim:
        t2i, t2v = build_models(sim, dtype)
        t2i.to(DEVICE)
        for frames in args.frames:
            began = time.time()
            seen = {"t2i": 0, "t2v": 0}  # frame-evaluations: rows of every UNet call (T2V: batch x frames)
            hooks = [t2i.unet.register_forward_pre_hook(counter(seen, "t2i")),
                     t2v.unet.register_forward_pre_hook(counter(seen, "t2v"))]
            try:
                r = run_job(sim, t2i, t2v, job, long_settings(frames, args.t2v_steps), offload=True)
            finally:
                for hook in hooks:
                    hook.remove()
            t2v.to("cpu")
            rows.append([str(frames)] + [gib(r["stages"][s]) if s in r["stages"] else "-" for s in STAGES]
                        + [gib(r["peak"]), "yes" if r["peak"] <= CARD_GIB * GIB else "no"])
            cost_rows.append([str(frames), str(seen["t2i"]), f"{seen['t2i'] / frames:.1f}", str(seen["t2v"]),
                              f"{seen['t2v'] / frames:.1f}"])
            print(f"  done: {frames} frames ({time.time() - began:.0f} s; calls {r['calls']})", flush=True)
    _fft_order_mask.cache_clear()
    wall_rows = [[str(frames), f"{tiny_wall_time(frames, args.steps, args.t2v_steps) * 1000:.0f}"]
                 for frames in args.frames]
    print()
    print(table(["frames"] + [f"{STAGE_NAMES[s]} peak" for s in STAGES] + ["job peak", f"fits {CARD_GIB} GiB"], rows,
                "Allocated on the device, GiB (a stage's peak is the highest allocation while it runs)"))
    print(table(["frames", "T2I frame-evaluations", "per frame", "T2V frame-evaluations", "per frame"], cost_rows,
                "Model cost, counted on the UNet calls (rows of every T2I call; batch x frames of every T2V call)"))
    print(table(["frames", "ms per frame"], wall_rows, "Wall time per frame, tiny models on this CPU"))
    print("Estimated on a simulated device, not measured on a GPU (see bench/simulated_gpu.py for what it leaves out).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
