"""Load time of a T2V model: the published pickle against its `convert`ed safetensors, in one run.

Writes a random-weight model in the container users download, converts it with the project's
`convert` (float16), then loads both files through the production loaders with float16 as the
working dtype, alternating the two (pickle first in even rounds, safetensors first in odd ones), and
prints every time, the best, the median and the ratio pickle / safetensors. Two times per load: the
loader call, and the loader call plus a first read of every weight (one byte per 4 KiB page). The
second one is the fair comparison: the safetensors loader returns tensors mapped from the file
(safetensors' `load_file`), whose bytes are only read at their first use (a move to the GPU, the first
UNet call), while the pickle loader's float32 -> float16 cast reads every byte inside the call.

- LaVie (`--model lavie`, the default): `lavie_base.pt`, `torch.save({"ema": state_dict})` with the
  published 830 keys in float32 (the 16 RoPE copies included), as `lib_elevator.tiny.lavie` writes it;
  `--size full` is the published size (`LAVIE_BASE_UNET_CONFIG`, 3.6 GB). Loaded by
  `LaVieBackend.load(path, base)`; the base is an SD1 model in memory whose text width matches
  (full size: SD1.5's CLIP ViT-L text encoder and VAE with random weights; its UNet, which LaVie never
  touches, is built on the meta device. Tiny: `lib_elevator.tiny.t2i.tiny_t2i("sd1")`).
- VideoCrafter2 (`--model videocrafter2`): `model.ckpt`, `{"state_dict": ...}` with the published
  2,039 keys in float32 (7.4 GB at full size), as `lib_elevator.tiny.videocrafter` writes it.
  Loaded by `VideoCrafter2Backend.load(path)`.

The page cache cannot be dropped here (no root), so every timed load reads files that are already in
memory: both files were just written, and one untimed warm-up round loads each before the timed ones.
The figures are warm-cache loads; a cold first load also waits for the disk, on 2x the bytes for the
float32 pickle. The files (several GB at full size) are deleted at the end.

Run: .venv/bin/python -m bench.load_time                          (LaVie, full size: ~1 min, 5.5 GB of disk)
     .venv/bin/python -m bench.load_time --size tiny
     .venv/bin/python -m bench.load_time --model videocrafter2 --size full   (~2.5 min, 11 GB of disk, ~9 GB RAM)
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import tempfile
import time

import torch

from bench import models
from bench.common import apply_threads, machine, table

CACHE = os.path.join(os.path.expanduser("~"), ".cache", "videoelevator")
DTYPE = torch.float16


# ------------------------------------------------------------------------------------------ LaVie


def write_lavie(folder: str, size: str) -> str:
    from lib_elevator.t2v.lavie_net import LAVIE_BASE_UNET_CONFIG, LaVieUNet
    from lib_elevator.tiny.lavie import LAVIE_WEIGHTS_NAME, write_tiny_lavie

    if size == "tiny":
        return write_tiny_lavie(folder, seed=0)
    torch.manual_seed(0)
    unet = LaVieUNet(LAVIE_BASE_UNET_CONFIG)  # every layer initialised randomly by its constructor
    path = os.path.join(folder, LAVIE_WEIGHTS_NAME)
    torch.save({"ema": unet.file_state_dict()}, path)  # the published container: 830 keys, float32
    return path


def lavie_base(size: str):
    """The SD1 model LaVie takes its text encoder, tokenizer and VAE from."""
    if size == "tiny":
        from lib_elevator.tiny.t2i import tiny_t2i

        return tiny_t2i("sd1", seed=0).to("cpu", DTYPE)
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from lib_elevator.t2i import T2IModel
    from lib_elevator.tokenizer import clip_tokenizer

    with torch.device("meta"):  # LaVie keeps only the base's text encoder, tokenizer and VAE
        unet = UNet2DConditionModel(**models.SD15_UNET)
    vae = AutoencoderKL(**models.SD_VAE).to(dtype=DTYPE).eval()
    text = CLIPTextModel(CLIPTextConfig(**models.CLIP_L_TEXT)).to(dtype=DTYPE).eval()
    return T2IModel("sd1", unet, vae, [text], [clip_tokenizer()], models.DDIM_SCHEDULER, "SD1.5-shaped (random)")


def convert_lavie(path: str) -> str:
    from lib_elevator.t2v.lavie import convert_checkpoint

    return convert_checkpoint(path, dtype=DTYPE, allow_pickle=True)


def load_lavie(path: str, base, pickled: bool):
    from lib_elevator.t2v.lavie import LaVieBackend

    return LaVieBackend.load(path, base, device="cpu", dtype=DTYPE, allow_pickle=pickled)


# ------------------------------------------------------------------------------------------ VideoCrafter2


def write_videocrafter2(folder: str, size: str) -> str:
    from lib_elevator.t2v import videocrafter_net as net
    from lib_elevator.tiny.videocrafter import (
        CHECKPOINT_NAME,
        random_ldm_vae,
        save_videocrafter_checkpoint,
        write_tiny_videocrafter,
    )

    if size == "tiny":
        return write_tiny_videocrafter(folder, seed=0)
    torch.manual_seed(0)
    state = {net.UNET_PREFIX + k: v for k, v in net.VideoCrafterUNet().state_dict().items()}
    state.update({net.TEXT_PREFIX + k: v for k, v in net.OpenCLIPTextTower().state_dict().items()})
    state.update(
        {
            net.VAE_PREFIX + k: v
            for k, v in random_ldm_vae(net.VC2_VAE_PARAMS, torch.Generator("cpu").manual_seed(1)).items()
        }
    )
    state.update(net.vc2_schedule_buffers())
    path = save_videocrafter_checkpoint(state, os.path.join(folder, CHECKPOINT_NAME))  # {"state_dict": ...}
    return path


def convert_videocrafter2(path: str) -> str:
    from lib_elevator.t2v.videocrafter import convert_checkpoint

    return convert_checkpoint(path, dtype=DTYPE, allow_pickle=True)


def load_videocrafter2(path: str, base, pickled: bool):
    from lib_elevator.t2v.videocrafter import VideoCrafter2Backend

    return VideoCrafter2Backend.load(path, device="cpu", dtype=DTYPE, allow_pickle=pickled)


MODELS = {
    "lavie": (write_lavie, convert_lavie, load_lavie),
    "videocrafter2": (write_videocrafter2, convert_videocrafter2, load_videocrafter2),
}


# ------------------------------------------------------------------------------------------ timing


def loaded_modules(backend) -> list[torch.nn.Module]:
    """The modules whose weights came from the file (LaVie's text encoder and VAE are the base's)."""
    names = ("unet",) if backend.kind == "lavie" else ("unet", "text_tower", "vae")
    return [getattr(backend, name) for name in names]


@torch.no_grad()
def touch(modules) -> None:
    """Read one byte of every 4 KiB page of every weight: what the first use of a memory-mapped tensor
    (a move to the GPU, the first UNet call) makes the kernel read in."""
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.numel():
                tensor.detach().reshape(-1).view(torch.uint8)[::4096].sum()


def timed_load(load, path: str, base, pickled: bool) -> tuple[float, float]:
    """(seconds in the loader, seconds to then read every weight page once)."""
    gc.collect()
    started = time.perf_counter()
    backend = load(path, base, pickled)
    loaded = time.perf_counter()
    touch(loaded_modules(backend))
    touched = time.perf_counter()
    assert backend.dtype == DTYPE, backend.dtype
    del backend
    gc.collect()
    return loaded - started, touched - loaded


def gb(path: str) -> str:
    return f"{os.path.getsize(path) / 1e9:.2f} GB"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.load_time", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=list(MODELS), default="lavie")
    p.add_argument("--size", choices=["tiny", "full"], default="full")
    p.add_argument("--rounds", type=int, default=4, help="timed rounds, each loading both files (default 4)")
    p.add_argument("--dir", default=None, help="where the files are written (default: a new folder under ~/.cache)")
    p.add_argument("--keep", action="store_true", help="keep the files (by default they are deleted)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = p.parse_args(argv)
    apply_threads(args.threads)
    write, convert, load = MODELS[args.model]
    os.makedirs(args.dir or CACHE, exist_ok=True)
    folder = tempfile.mkdtemp(prefix=f"load-time-{args.model}-{args.size}-", dir=args.dir or CACHE)
    print(f"machine: {machine()}")
    print(f"model: {args.model}, {args.size} size, random weights; working dtype {str(DTYPE).split('.')[1]}; {folder}")
    try:
        started = time.perf_counter()
        pickle_path = write(folder, args.size)
        print(
            f"wrote the published container: {os.path.basename(pickle_path)} {gb(pickle_path)} "
            f"({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
        gc.collect()
        started = time.perf_counter()
        safe_path = convert(pickle_path)
        print(
            f"converted (lib_elevator convert, float16): {os.path.basename(safe_path)} {gb(safe_path)} "
            f"({time.perf_counter() - started:.1f} s, once)",
            flush=True,
        )
        gc.collect()
        base = lavie_base(args.size) if args.model == "lavie" else None
        files = {"pickle": (pickle_path, True), "safetensors": (safe_path, False)}
        sizes = {name: gb(path) for name, (path, _) in files.items()}
        warm = {name: timed_load(load, path, base, pickled) for name, (path, pickled) in files.items()}
        print(
            "warm-up round (not counted; load + first read): "
            + ", ".join(f"{k} {a:.2f} + {b:.2f} s" for k, (a, b) in warm.items()),
            flush=True,
        )
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in files}
        for round_ in range(args.rounds):
            order = list(files) if round_ % 2 == 0 else list(reversed(files))
            for name in order:
                path, pickled = files[name]
                times[name].append(timed_load(load, path, base, pickled))
            print(
                f"  round {round_ + 1} (load + first read): "
                + ", ".join(f"{n} {times[n][-1][0]:.2f} + {times[n][-1][1]:.2f} s" for n in order),
                flush=True,
            )
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    # "load": the loader call; "ready": the loader call + reading every weight page once.
    measures = {name: {"load": [a for a, _ in t], "ready": [a + b for a, b in t]} for name, t in times.items()}
    rows = []
    for name in files:
        for what in ("load", "ready"):
            values = measures[name][what]
            rows.append(
                [
                    name if what == "load" else "",
                    "loader call" if what == "load" else "loader call + first read of every weight",
                    f"{min(values):.2f}",
                    f"{statistics.median(values):.2f}",
                    " ".join(f"{v:.2f}" for v in values),
                ]
            )
    print()
    print(
        f"pickle: {os.path.basename(pickle_path)}, float32 ({sizes['pickle']}); "
        f"safetensors: {os.path.basename(safe_path)}, float16 ({sizes['safetensors']})"
    )
    print(
        table(
            ["file", "time", "best s", "median s", f"all {args.rounds} rounds, s"],
            rows,
            f"Load to a float16 backend on the CPU ({args.model}, {args.size}; warm page cache)",
        )
    )
    for what, label in (("load", "loader call"), ("ready", "loader call + first read")):
        best = {name: min(measures[name][what]) for name in files}
        median = {name: statistics.median(measures[name][what]) for name in files}
        print(
            f"ratio pickle / safetensors, {label}: {best['pickle'] / best['safetensors']:.2f}x (best), "
            f"{median['pickle'] / median['safetensors']:.2f}x (median)"
        )
    print(
        "the safetensors loader maps the file (its tensors are read on first use); the pickle loader maps it too "
        "but casts float32 to float16, reading every byte"
    )
    print("page cache not dropped (no root): both files are read from memory; a cold load also waits for the disk")
    print(f"files deleted: {not args.keep}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
