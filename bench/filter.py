"""Low-pass filter: `lib_elevator.filters` against a direct per-element construction.

The direct version is how FreeInit-style code builds the mask: a Python loop over every (t, h, w)
that evaluates the gaussian formula for one element and writes it into a tensor, then filters with
fftshift / ifftshift around the mask. It is written here for the comparison (same formula, same
result); ours builds the mask with broadcasting, stores it un-shifted (no shifts of the data) and
caches it per (spec, shape, device, dtype).

Run: .venv/bin/python -m bench.filter
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from bench.common import add_threads_argument, apply_threads, machine, table
from lib_elevator import filters
from lib_elevator.filters import FilterSpec, lowpass_mask, temporal_lowpass


def direct_mask(frames: int, height: int, width: int, spatial: float, temporal: float) -> torch.Tensor:
    """Gaussian low-pass mask in centred (fftshifted) order, one element at a time."""
    mask = torch.zeros(frames, height, width)
    for t in range(frames):
        for h in range(height):
            for w in range(width):
                f_t = 2.0 * t / frames - 1.0
                f_h = 2.0 * h / height - 1.0
                f_w = 2.0 * w / width - 1.0
                r2 = (f_t / temporal) ** 2 + (f_h**2 + f_w**2) / spatial**2
                mask[t, h, w] = math.exp(-0.5 * r2)
    return mask


def direct_apply(latents: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Filter (F, C, h, w) over (F, h, w) with a centred mask: FFT, shift, multiply, shift back, inverse FFT."""
    x = latents.transpose(0, 1)  # (C, F, h, w)
    dims = (-3, -2, -1)
    spectrum = torch.fft.fftshift(torch.fft.fftn(x, dim=dims), dim=dims) * mask
    filtered = torch.fft.ifftn(torch.fft.ifftshift(spectrum, dim=dims), dim=dims).real
    return filtered.transpose(0, 1).contiguous()


def timed(fn, repeat: int) -> tuple[float, object]:
    """Median seconds of `repeat` calls, and the last result."""
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms" if seconds < 1 else f"{seconds:.2f} s"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.filter", description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--latent-size", type=int, default=64, help="latent height and width (64 = 512 px)")
    p.add_argument("--channels", type=int, default=4)
    p.add_argument("--repeat", type=int, default=50, help="timed repetitions of ours (median); the direct build: 3")
    add_threads_argument(p)
    args = p.parse_args(argv)
    apply_threads(args.threads)
    F, C, S = args.frames, args.channels, args.latent_size
    spec = FilterSpec("gaussian", 1.0, 0.4)  # the ZeroScope preset: d_s = 1.0, d_t = 0.4
    latents = torch.randn(F, C, S, S, generator=torch.Generator().manual_seed(0))
    print(f"machine: {machine()}")
    print(f"latents {F} frames x {C} channels x {S}x{S}, gaussian d_s={spec.spatial}, d_t={spec.temporal}, float32\n")

    direct_build, mask_direct = timed(lambda: direct_mask(F, S, S, spec.spatial, spec.temporal), 3)
    direct_filter, out_direct = timed(lambda: direct_apply(latents, mask_direct), args.repeat)
    ours_build, mask_ours = timed(lambda: lowpass_mask(spec, F, S, S), args.repeat)

    def cold():
        filters._fft_order_mask.cache_clear()
        return temporal_lowpass(latents, spec)

    ours_cold, out_ours = timed(cold, args.repeat)  # mask built and applied (first call of a job)
    temporal_lowpass(latents, spec)
    ours_warm, _ = timed(lambda: temporal_lowpass(latents, spec), args.repeat)  # mask from the cache

    mask_err = (mask_ours.float() - mask_direct).abs().max().item()
    out_err = (out_ours - out_direct).abs().max().item()
    rows = [
        ["build the mask", ms(direct_build), ms(ours_build), f"{direct_build / ours_build:,.0f}x"],
        ["apply (mask given)", ms(direct_filter), ms(ours_warm), f"{direct_filter / ours_warm:.1f}x"],
        [
            "build + apply (first call)",
            ms(direct_build + direct_filter),
            ms(ours_cold),
            f"{(direct_build + direct_filter) / ours_cold:,.0f}x",
        ],
        [
            "build + apply (later calls: cached mask)",
            ms(direct_build + direct_filter),
            ms(ours_warm),
            f"{(direct_build + direct_filter) / ours_warm:,.0f}x",
        ],
    ]
    print(table(["", "direct (per element)", "lib_elevator.filters", "speed-up"], rows, "Median times"))
    print(f"same result: mask max |diff| {mask_err:.1e}, filtered latents max |diff| {out_err:.1e}")
    speedup = (direct_build + direct_filter) / ours_cold
    print(
        f"target >= 100x on build + apply: {'MET' if speedup >= 100 else 'NOT MET'} on the first call "
        f"({speedup:,.0f}x), {(direct_build + direct_filter) / ours_warm:,.0f}x with the cached mask; "
        f"mask construction alone {direct_build / ours_build:,.0f}x\n"
    )

    # Cache: across calls and across jobs (a job makes a new FilterSpec from its settings; equal specs hit).
    filters._fft_order_mask.cache_clear()
    started = time.perf_counter()
    first = filters._fft_order_mask(spec, F, S, S, latents.device, torch.float32)
    first_s = time.perf_counter() - started
    started = time.perf_counter()
    again = filters._fft_order_mask(FilterSpec("gaussian", 1.0, 0.4), F, S, S, latents.device, torch.float32)
    again_s = time.perf_counter() - started
    for _ in range(3):
        temporal_lowpass(latents, FilterSpec("gaussian", 1.0, 0.4))
    info = filters._fft_order_mask.cache_info()
    print("Mask cache (functools.lru_cache keyed by spec, shape, device, dtype):")
    print(f"  first build {ms(first_s)}, second build (new but equal FilterSpec, as a new job makes) {ms(again_s)}")
    print(f"  same tensor object: {again is first}; cache after 3 more filter calls: {info}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
