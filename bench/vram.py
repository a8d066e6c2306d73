"""Peak VRAM of a job at the paper's size, estimated on a CPU: the real job on a simulated GPU.

No GPU is lent to this project's sessions, yet the question users ask first is whether a job fits
their card. This runs `standalone.generate` itself (the loop, the Refiner's offload moves, diffusers'
UNets and VAE) with float16 SD1.5 + ZeroScope v2 models of the real architectures on the simulated
device of `bench.simulated_gpu`, which counts the bytes allocated on it op by op — what
`torch.cuda.max_memory_allocated` reports on a GPU, less kernel workspaces (see that module). The
weights have no data, so the figures do not depend on them and nothing is loaded from disk.

Variants (16 frames, 512x512 px, 50 steps, refine at 10/30/50/70 %, N = 8: the paper's settings):
- resident: both models stay on the device;
- offloaded (`offload_t2v=True`): the T2V model visits the device only for its SDEdit steps, while
  the T2I UNet and text encoder step aside (`standalone.t2i_off_device`);
- offloaded + forward chunking: also the T2V UNet's feed-forward layers in chunks of 8 along
  dim 1, as the authors run it (`ZeroScopeBackend.enable_forward_chunking`);
and the final VAE decode of the 16 frames, 16 / 4 (the pipeline's default) / 2 / 1 frames per call.

Run: .venv/bin/python -m bench.vram            (~22 min on 2 cores: each job runs its 234 model calls op by
                                               op, ~4 min; the chunked one ~14 min)
     .venv/bin/python -m bench.vram --steps 6  (peaks within 0.07 GiB of the 50-step ones, ~13 min: the T2V
                                               calls, which the chunked variant makes slow, do not depend on steps)
"""

from __future__ import annotations

import argparse
import gc
import time

import torch

from bench import models
from bench.common import NEGATIVE, PROMPT, machine, table
from bench.simulated_gpu import DEVICE, SimulatedGpu
from lib_elevator.filters import _fft_order_mask
from lib_elevator.settings import Settings
from lib_elevator.standalone import Job, generate
from lib_elevator.t2i import T2IModel
from lib_elevator.t2v.zeroscope import ZeroScopeBackend
from lib_elevator.tokenizer import clip_tokenizer

GIB = 2**30
CARD_GIB = 12  # the target: a 12 GB card
STAGES = ("t2i", "inversion", "pnp", "t2v", "decode")
STAGE_NAMES = {"t2i": "main call", "inversion": "inversion", "pnp": "PnP", "t2v": "T2V", "decode": "VAE decode"}
VARIANTS = {
    "resident": dict(offload=False, chunking=False),
    "offloaded": dict(offload=True, chunking=False),
    "offloaded + T2V FF chunks": dict(offload=True, chunking=True),
}


def build_models(sim: SimulatedGpu, dtype: torch.dtype) -> tuple[T2IModel, ZeroScopeBackend]:
    """SD1.5 and ZeroScope v2 of the real architectures (bench.models' configs) with no data, on the
    CPU side of the simulation."""
    from diffusers import AutoencoderKL, UNet2DConditionModel, UNet3DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with sim.build():  # the modules only: the schedule tables the wrappers make must be real
        unet, vae = UNet2DConditionModel(**models.SD15_UNET), AutoencoderKL(**models.SD_VAE)
        text = CLIPTextModel(CLIPTextConfig(**models.CLIP_L_TEXT))
        unet3d, vae3d = UNet3DConditionModel(**models.ZEROSCOPE_UNET), AutoencoderKL(**models.SD_VAE)
        text3d = CLIPTextModel(CLIPTextConfig(**models.OPENCLIP_H_TEXT))
    t2i = T2IModel(
        "sd1", unet.eval(), vae.eval(), [text.eval()], [clip_tokenizer()], models.DDIM_SCHEDULER, "SD1.5 (simulated)"
    )
    t2v = ZeroScopeBackend(
        unet3d, text3d, clip_tokenizer(pad_token="!"), models.DDIM_SCHEDULER, vae3d, "ZeroScope v2 (simulated)"
    )
    return t2i.to("cpu", dtype), t2v.to("cpu", dtype)


def device_bytes(sim: SimulatedGpu, move) -> int:
    """Bytes `move()` puts on the device (e.g. a model's weights)."""
    gc.collect()  # temporaries caught in reference cycles would otherwise be counted until a later collection
    before = sim.current
    move()
    gc.collect()
    return sim.current - before


def run_job(sim: SimulatedGpu, t2i, t2v, job: Job, settings: Settings, offload: bool, decode_batch: int = 4) -> dict:
    """One job on the simulated device. The decoded pixels have no values, so the frames returned
    to `generate` are zeros of the right shape (the decode itself runs and is counted)."""

    def decode(latents, batch=decode_batch):
        sim.stage = "decode"
        T2IModel.decode(t2i, latents, batch)
        return torch.zeros(latents.shape[0], job.height, job.width, 3)

    def progress(stage: str) -> None:
        sim.stage = stage

    move_t2v = t2v.to

    def to(device=None, dtype=None):
        sim.stage = "t2v"  # an offloaded T2V model's arrival (after the main call) belongs to its stage
        return move_t2v(device, dtype)

    t2i.decode, t2v.to = decode, to
    try:
        sim.stage = "prompts"
        gc.collect()
        sim.reset_peak()
        start = sim.current
        result = generate(t2i, t2v, job, settings, progress=progress, offload_t2v=offload)
    finally:
        del t2i.decode, t2v.to
    return dict(start=start, peak=sim.peak, stages=dict(sim.stage_peaks), end=sim.current, calls=result.calls)


def decode_peak(sim: SimulatedGpu, t2i: T2IModel, frames: int, size: int, batch: int) -> int:
    """Peak above the resident weights while decoding `frames` latents `batch` at a time."""
    latents = torch.zeros(frames, 4, size // 8, size // 8, device=DEVICE)
    sim.reset_peak()
    before = sim.current
    T2IModel.decode(t2i, latents, batch)
    return sim.peak - before


def gib(n: int) -> str:
    return f"{n / GIB:.2f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.vram", description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=512, help="width = height in px")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--dtype", default="float16")
    args = p.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    settings = Settings(frames=args.frames, refine_points="10%,30%,50%,70%", t2v_steps=8).validate()
    job = Job(PROMPT, NEGATIVE, args.size, args.size, args.steps, 7.5, seed=0)
    print(f"machine: {machine()}")
    print(
        f"simulated GPU (bench.simulated_gpu): bytes allocated on the device, op by op, rounded to 512 B; "
        f"FlashAttention for {args.dtype} attention; kernel workspaces not included\n"
        f"job: {args.frames} frames, {args.size}x{args.size} px, {args.steps} steps, refine at 10/30/50/70 %, "
        f"N = 8, CFG 7.5, {args.dtype}; SD1.5 + ZeroScope v2 architectures\n",
        flush=True,
    )

    rows, weights = [], {}
    with SimulatedGpu().active() as sim:
        t2i, t2v = build_models(sim, dtype)
        weights["T2I (UNet + VAE + text)"] = device_bytes(sim, lambda: t2i.to(DEVICE))
        weights["T2V (UNet3D + text + VAE)"] = device_bytes(sim, lambda: t2v.to(DEVICE))
        t2v.to("cpu")
        larger = max(weights.values())
        for name, variant in VARIANTS.items():
            began = time.time()
            if not variant["offload"]:
                t2v.to(DEVICE)
            if variant["chunking"]:
                t2v.enable_forward_chunking(8, 1)
            try:
                r = run_job(sim, t2i, t2v, job, settings, variant["offload"])
            except ValueError as error:  # chunking needs sizes that divide (ZeroScopeBackend says which)
                print(f"  skipped: {name}: {error}", flush=True)
                continue
            finally:
                t2v.disable_forward_chunking()
                t2v.to("cpu")
            rows.append(
                [name, gib(r["start"])]
                + [gib(r["stages"][s]) if s in r["stages"] else "-" for s in STAGES]
                + [
                    gib(r["peak"]),
                    gib(r["peak"] - larger),
                    "yes" if r["peak"] <= CARD_GIB * GIB else "no",
                    gib(r["end"]),
                ]
            )
            print(f"  done: {name} ({time.time() - began:.0f} s; calls {r['calls']})", flush=True)
        decode_rows = [
            [
                f"{batch}" + (" (default)" if batch == 4 else ""),
                gib(decode_peak(sim, t2i, args.frames, args.size, batch)),
            ]
            for batch in sorted({args.frames, 4, 2, 1}, reverse=True)
        ]
    _fft_order_mask.cache_clear()  # its masks were made on the simulated device

    print()
    print(table(["model on the device", "weights GiB"], [[k, gib(v)] for k, v in weights.items()], "Weights"))
    print(
        table(
            ["variant", "at start"]
            + [f"{STAGE_NAMES[s]} peak" for s in STAGES]
            + ["job peak", "peak - larger model", f"fits {CARD_GIB} GiB", "at end"],
            rows,
            "Allocated on the device, GiB (a stage's peak is the highest allocation while it runs)",
        )
    )
    print(table(["frames per VAE call", "decode peak above the weights, GiB"], decode_rows, "VAE decode"))
    print("Estimated on a simulated device, not measured on a GPU (see bench/simulated_gpu.py for what it leaves out).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
