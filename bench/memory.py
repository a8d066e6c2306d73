"""Peak memory of a job: T2V model resident vs offloaded between refine steps, and VAE decoding in
slices. Every variant runs in a fresh subprocess, so each peak is its own.

CPU: resident set size from /proc/self/status. The peak (VmHWM) is reset before the measured phase
by writing 5 to /proc/self/clear_refs (Linux), so a phase's peak is not hidden by an earlier one
such as loading; where that is not possible, the lifetime peak (getrusage ru_maxrss) is reported.
The loaders map the safetensors files into memory, so weights become resident when first read; each
child reads every weight once after loading ("weights read") before the measured phase. "job peak -
before" is the peak during `generate` minus the resident size just before it (the job's working
memory: activations, latents, trajectories, decoded frames); "load peak" is the peak while loading.
GPU (--device cuda): torch.cuda.max_memory_allocated, reset before the phase.

Variants:
- job, T2V resident / T2V offloaded (`generate(..., offload_t2v=True)`: the T2V model lives on the
  CPU and visits the device for each refine step). On a CPU the device *is* the CPU: offloading
  moves nothing and cannot lower RAM; the two rows must agree, and their job peak is the working
  memory a job adds to the loaded models.
- decode k: `T2IModel.decode(latents, batch=k)` of F frames, k = F (all at once), 4, 2, 1, with
  the full-size SD VAE.

Run: .venv/bin/python -m bench.memory          (tiny-model job; full-size SD1.5 VAE decode; ~5 min)
     .venv/bin/python -m bench.memory --full   (also the job with the full-size models, ~10 more min)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from bench.common import machine, table

RESULT = "RESULT "
JOB_CONFIGS = {
    "tiny": dict(frames=16, steps=20, refine="10%,30%,50%,70%", t2v_steps=8, size=64),
    "full": dict(frames=8, steps=6, refine="10%,60%", t2v_steps=2, size=64),
    # the paper's job on the full-size models, as bench.vram simulates it (--paper; for a GPU)
    "paper": dict(frames=16, steps=50, refine="10%,30%,50%,70%", t2v_steps=8, size=512),
}
MODELS = {"tiny": "tiny", "full": "full", "paper": "full"}  # which bench.models set a configuration runs on


# ------------------------------------------------------------------------------------ measuring
def rss_bytes() -> int:
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def peak_bytes() -> int:
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak() -> bool:
    """Reset the resident-set peak to the current size; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_parts() -> dict[str, int]:
    """Resident anonymous memory and resident file-backed pages (memory-mapped weights), bytes."""
    parts = {}
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith(("RssAnon:", "RssFile:")):
                parts[line.split(":")[0]] = int(line.split()[1]) * 1024
    return parts


def touch_weights(*modules) -> None:
    """Read every parameter and buffer once. The loaders map safetensors files into memory, so
    weights become resident only when first read; touching them before a phase keeps that first
    read out of the phase's peak."""
    import torch

    with torch.no_grad():
        for module in modules:
            for tensor in list(module.parameters()) + list(module.buffers()):
                tensor.sum()


class Phase:
    """Peak CPU RSS (and CUDA allocation) of a block, above what was resident when it started."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        import torch

        self.resettable = reset_peak()
        self.start = rss_bytes()
        self.started = time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.cuda_start = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.cuda_peak = torch.cuda.max_memory_allocated(self.device)
            self.cuda_end = torch.cuda.memory_allocated(self.device)
        self.seconds = time.perf_counter() - self.started
        self.peak = peak_bytes()
        self.end = rss_bytes()
        return False

    def report(self, name: str) -> dict:
        out = {
            f"{name}_peak": self.peak,
            f"{name}_increment": self.peak - self.start,
            f"{name}_rss_before": self.start,
            f"{name}_rss_after": self.end,
            f"{name}_seconds": self.seconds,
            f"{name}_resettable": self.resettable,
        }
        if self.device.type == "cuda":
            out.update({f"{name}_cuda_peak": self.cuda_peak, f"{name}_cuda_before": self.cuda_start})
        return out


# ------------------------------------------------------------------------------------ children
def child_job(args) -> dict:
    import torch

    from bench import models
    from bench.common import NEGATIVE, PROMPT, apply_threads
    from lib_elevator.dtypes import resolve_device, resolve_dtype
    from lib_elevator.loaders import load_t2i
    from lib_elevator.noise import TorchNoise
    from lib_elevator.settings import Settings
    from lib_elevator.standalone import Job, generate
    from lib_elevator.t2v.registry import load_t2v

    apply_threads(args.threads)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    cfg = JOB_CONFIGS[args.size]
    t2i_path, t2v_path = models.folders(MODELS[args.size], args.cache)
    out = {"rss_imported": rss_bytes()}
    with Phase(device) as load:
        t2i = load_t2i(t2i_path, device=device, dtype=dtype)
        # as the CLI: an offloaded T2V model is loaded on the CPU and visits the device per refine step
        t2v = load_t2v(t2v_path, device="cpu" if args.offload else device, dtype=dtype)
    out.update(load.report("load"))
    out.update({f"loaded_{k}": v for k, v in rss_parts().items()})
    touch_weights(
        t2i.unet, t2i.vae, *t2i.text_encoders, t2v.unet, t2v.text_encoder, *([t2v.vae] if t2v.vae is not None else [])
    )
    out["rss_touched"] = rss_bytes()
    out.update({f"touched_{k}": v for k, v in rss_parts().items()})
    settings = Settings(frames=cfg["frames"], refine_points=cfg["refine"], t2v_steps=cfg["t2v_steps"]).validate()
    job = Job(PROMPT, NEGATIVE, cfg["size"], cfg["size"], cfg["steps"], 7.5, seed=0)
    with Phase(device) as run:
        result = generate(t2i, t2v, job, settings, noise=TorchNoise(0), offload_t2v=args.offload)
    out.update(run.report("job"))
    out["latents_finite"] = bool(torch.isfinite(result.latents).all())
    out["t2v_device_after"] = str(t2v.device)
    return out


def child_decode(args) -> dict:
    import torch

    from bench import models
    from bench.common import apply_threads
    from lib_elevator.dtypes import resolve_device, resolve_dtype
    from lib_elevator.loaders import load_t2i

    apply_threads(args.threads)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    folder = models.build_full_sd15(os.path.join(args.cache, "sd15-random"))
    t2i = load_t2i(folder, device=device, dtype=dtype)
    h = args.decode_size // t2i.latent_space.downscale
    latents = torch.randn(args.decode_frames, 4, h, h, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    touch_weights(t2i.vae)
    with Phase(device) as run:
        images = t2i.decode(latents, batch=args.batch)
    out = run.report("decode")
    out["images_bytes"] = images.numel() * images.element_size()
    return out


# ------------------------------------------------------------------------------------ parent
def run_child(kind: str, extra: list[str], args) -> dict:
    command = [sys.executable, "-m", "bench.memory", "--child", kind, "--device", args.device, "--dtype", args.dtype]
    command += ["--cache", args.cache, "--decode-size", str(args.decode_size)]
    command += ["--decode-frames", str(args.decode_frames)] + (["--threads", str(args.threads)] if args.threads else [])
    started = time.perf_counter()
    done = subprocess.run(command + extra, capture_output=True, text=True, cwd=os.getcwd())
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(command + extra)} failed:\n{done.stderr[-3000:]}")
    result = json.loads(lines[-1][len(RESULT) :])
    result["wall"] = time.perf_counter() - started
    return result


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if abs(n) >= 2**30 else f"{n / 2**20:.0f} MiB"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--full", action="store_true", help="also the job with the full-size models (~11 GB of weights)")
    p.add_argument("--paper", action="store_true", help="also the paper's job (16 frames, 512 px, 50 steps): for a GPU")
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (auto: cuda when available)")
    p.add_argument("--dtype", default="auto", help="float32, float16, ... (auto: float16 on cuda, else float32)")
    p.add_argument("--decode-size", type=int, default=256, help="frame size in pixels for the decode variants")
    p.add_argument("--decode-frames", type=int, default=8, help="frames decoded in the decode variants")
    p.add_argument("--cache", default=os.path.join(os.path.expanduser("~"), ".cache", "videoelevator", "bench-models"))
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads in the children (default: torch's)")
    # internal: one variant in this process
    p.add_argument("--child", choices=["job", "decode"], help=argparse.SUPPRESS)
    p.add_argument("--size", choices=list(JOB_CONFIGS), default="tiny", help=argparse.SUPPRESS)
    p.add_argument("--offload", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        result = child_job(args) if args.child == "job" else child_decode(args)
        print(RESULT + json.dumps(result), flush=True)
        return 0

    import torch

    cuda = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    print(f"machine: {machine()}; the measured processes use {args.threads or 'the default'} torch thread(s)")
    print("CPU peaks: VmHWM reset per phase via /proc/self/clear_refs; every variant in a fresh process\n")

    rows = []
    for size in ["tiny"] + (["full"] if args.full else []) + (["paper"] if args.paper else []):
        cfg = JOB_CONFIGS[size]
        for offload in (False, True):
            r = run_child("job", ["--size", size] + (["--offload"] if offload else []), args)
            row = [
                f"{size}: {cfg['frames']} frames, {cfg['steps']} steps, {cfg['size']} px",
                "offloaded" if offload else "resident",
                gib(r["load_peak"] - r["rss_imported"]),
                gib(r["load_rss_after"] - r["rss_imported"]),
                gib(r["rss_touched"] - r["rss_imported"]),
                gib(r["job_peak"]),
                gib(r["job_increment"]),
                f"{r['job_seconds']:.1f}",
            ]
            if cuda:
                row += [gib(r["job_cuda_before"]), gib(r["job_cuda_peak"])]
            else:
                row += ["not measurable (no GPU)"]
            rows.append(row)
            print(f"  done: job {size} {'offloaded' if offload else 'resident'} ({r['wall']:.0f} s)", flush=True)
    headers = ["job", "T2V", "load peak", "after load", "weights read", "job peak RSS", "job peak - before", "job s"]
    headers += ["VRAM before", "VRAM peak"] if cuda else ["GPU VRAM"]
    print()
    print(
        table(
            headers,
            rows,
            "Job: T2V resident vs offloaded (RSS above the imported libraries, except the absolute job peak; "
            "'weights read': after reading every weight once, the state the job starts from)",
        )
    )

    rows = []
    frames = args.decode_frames
    for k in sorted({frames} | {k for k in (4, 2, 1) if k < frames}, reverse=True):
        r = run_child("decode", ["--batch", str(k)], args)
        row = [
            f"{k}" + (" (all)" if k == frames else ""),
            gib(r["decode_increment"]),
            gib(r["decode_increment"] / k),
            f"{r['decode_seconds']:.1f}",
        ]
        row += [gib(r["decode_cuda_peak"] - r["decode_cuda_before"])] if cuda else ["not measurable (no GPU)"]
        rows.append(row)
        print(f"  done: decode batch {k} ({r['wall']:.0f} s)", flush=True)
    headers = ["frames per VAE call", "decode peak - before", "per frame in a call", "decode s"]
    headers += ["VRAM peak - before"] if cuda else ["GPU VRAM"]
    print()
    print(
        table(
            headers,
            rows,
            f"VAE decode of {frames} frames at {args.decode_size}x{args.decode_size} px, full-size SD VAE "
            "(T2IModel.decode(latents, batch=k))",
        )
    )
    if not cuda:
        print("GPU VRAM: no GPU on this machine, not measured (run with --device cuda on a GPU machine).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
