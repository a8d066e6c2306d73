"""Peak VRAM of a LaVie or VideoCrafter2 job, estimated on a CPU: the real job on a simulated GPU.

The same method as `bench.vram` (whose helpers it uses): `standalone.generate` runs with float16
models of the real architectures, built with no data on the simulated device of
`bench.simulated_gpu`, which counts the bytes allocated on it op by op. The T2V model is offloaded
(`offload_t2v=True`): it visits the device only for its SDEdit steps, while the T2I UNet and text
encoder step aside. The T2I model is SD1.5 (bench.models' full-size configuration). The backends
are built directly from the network classes (no file is read):

- LaVie: `LaVieUNet` of the published size (`LAVIE_BASE_UNET_CONFIG`), with the SD1.5 model as its
  base (LaVie runs with SD1's CLIP text encoder and VAE: the T2I model's, shared); the authors' LaVie
  job: 16 frames, 512x512 px, 50 steps, refine at 45/35/30/25/20/15 steps remaining, N = 8 (the
  "LaVie-like" preset);
- VideoCrafter2: `VideoCrafterUNet()` + `OpenCLIPTextTower()` (ViT-H/14) + its kl-f8 VAE; 16 frames,
  320x512 px (height x width, VideoCrafter2's size), 50 steps, the "VideoCrafter2-like" preset.

Run: .venv/bin/python -m bench.vram_t2v --model lavie          (~5 min on 2 cores, 1 thread)
     .venv/bin/python -m bench.vram_t2v --model videocrafter2  (~4.5 min)
"""

from __future__ import annotations

import argparse
import time

import torch

from bench import models
from bench.common import NEGATIVE, PROMPT, apply_threads, machine, table
from bench.simulated_gpu import DEVICE, SimulatedGpu
from bench.vram import CARD_GIB, GIB, STAGE_NAMES, STAGES, device_bytes, gib, run_job
from lib_elevator.filters import _fft_order_mask
from lib_elevator.settings import Settings
from lib_elevator.standalone import Job
from lib_elevator.t2i import T2IModel
from lib_elevator.tokenizer import clip_tokenizer

# model -> (preset, height, width, what the T2V weights on the device are)
JOBS = {
    "lavie": ("LaVie-like", 512, 512, "LaVie base UNet (text encoder and VAE: the SD1.5 model's)"),
    "videocrafter2": ("VideoCrafter2-like", 320, 512, "VideoCrafter2 UNet + OpenCLIP-H text + VAE"),
}


def build_sd15(sim: SimulatedGpu) -> T2IModel:
    """SD1.5 of the real architecture (bench.models' configs) with no data, on the CPU side."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with sim.build():
        unet, vae = UNet2DConditionModel(**models.SD15_UNET), AutoencoderKL(**models.SD_VAE)
        text = CLIPTextModel(CLIPTextConfig(**models.CLIP_L_TEXT))
    return T2IModel(
        "sd1", unet.eval(), vae.eval(), [text.eval()], [clip_tokenizer()], models.DDIM_SCHEDULER, "SD1.5 (simulated)"
    )


def build_lavie(sim: SimulatedGpu, t2i: T2IModel):
    from lib_elevator.t2v.lavie import LaVieBackend
    from lib_elevator.t2v.lavie_net import LAVIE_BASE_UNET_CONFIG, LaVieUNet

    with sim.build():
        unet = LaVieUNet(LAVIE_BASE_UNET_CONFIG).requires_grad_(False).eval()
    return LaVieBackend(unet, t2i, name="LaVie base (simulated)")


def build_videocrafter2(sim: SimulatedGpu, t2i: T2IModel):
    from diffusers import AutoencoderKL

    from lib_elevator.t2v import videocrafter_net as net
    from lib_elevator.t2v.videocrafter import BUILTIN_CONFIG, VideoCrafter2Backend

    config = net.read_vc2_config(BUILTIN_CONFIG, "the built-in VideoCrafter2 config")
    with sim.build():
        unet = net.VideoCrafterUNet().requires_grad_(False).eval()
        text = net.OpenCLIPTextTower().requires_grad_(False).eval()
        vae = AutoencoderKL(**net.vc2_vae_config()).requires_grad_(False).eval()
    return VideoCrafter2Backend(unet, text, vae, config, name="VideoCrafter2 (simulated)")


BUILDERS = {"lavie": build_lavie, "videocrafter2": build_videocrafter2}


def run(model: str, steps: int, frames: int, dtype: torch.dtype) -> tuple[list, dict, dict]:
    preset, height, width, t2v_weights = JOBS[model]
    settings = Settings(frames=frames).with_preset(preset).validate()
    job = Job(PROMPT, NEGATIVE, width, height, steps, 7.5, seed=0)
    weights = {}
    with SimulatedGpu().active() as sim:
        t2i = build_sd15(sim)
        t2v = BUILDERS[model](sim, t2i)
        t2i.to("cpu", dtype)
        t2v.to("cpu", dtype)
        weights["T2I (UNet + VAE + text)"] = device_bytes(sim, lambda: t2i.to(DEVICE))
        weights[f"T2V: {t2v_weights}"] = device_bytes(sim, lambda: t2v.to(DEVICE))
        t2v.to("cpu")
        began = time.time()
        r = run_job(sim, t2i, t2v, job, settings, offload=True)
        seconds = time.time() - began
    _fft_order_mask.cache_clear()  # its masks were made on the simulated device
    larger = max(weights.values())
    row = (
        [f"{model}, offloaded", gib(r["start"])]
        + [gib(r["stages"][s]) if s in r["stages"] else "-" for s in STAGES]
        + [gib(r["peak"]), gib(r["peak"] - larger), "yes" if r["peak"] <= CARD_GIB * GIB else "no", gib(r["end"])]
    )
    info = dict(preset=preset, height=height, width=width, seconds=seconds, calls=r["calls"], settings=settings)
    return row, weights, info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.vram_t2v", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=[*JOBS, "both"], default="both")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--dtype", default="float16")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = p.parse_args(argv)
    apply_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    print(f"machine: {machine()}")
    print(
        "simulated GPU (bench.simulated_gpu): bytes allocated on the device, op by op, rounded to 512 B; "
        f"FlashAttention for {args.dtype} attention; kernel workspaces not included",
        flush=True,
    )
    for model in JOBS if args.model == "both" else (args.model,):
        row, weights, info = run(model, args.steps, args.frames, dtype)
        s = info["settings"]
        print(
            f"\njob: {model}, {args.frames} frames, {info['height']}x{info['width']} px (height x width), "
            f"{args.steps} steps, preset {info['preset']} (refine at {s.refine_points}, N = {s.t2v_steps}, "
            f"T2V guidance {s.t2v_guidance}), CFG 7.5, {args.dtype}, offload_t2v; T2I SD1.5 architecture\n"
            f"  done ({info['seconds']:.0f} s; calls {info['calls']})\n",
            flush=True,
        )
        print(table(["model on the device", "weights GiB"], [[k, gib(v)] for k, v in weights.items()], "Weights"))
        print(
            table(
                ["variant", "at start"]
                + [f"{STAGE_NAMES[st]} peak" for st in STAGES]
                + ["job peak", "peak - larger model", f"fits {CARD_GIB} GiB", "at end"],
                [row],
                "Allocated on the device, GiB (a stage's peak is the highest allocation while it runs)",
            ),
            flush=True,
        )
    print("Estimated on a simulated device, not measured on a GPU (see bench/simulated_gpu.py for what it leaves out).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
