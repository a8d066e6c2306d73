"""The same VideoElevator request in several running WebUIs and in the standalone pipeline, side by side.

Each server must have this extension installed, the checkpoint FILE under the same file name in its
models/Stable-diffusion, and the T2V model in models/VideoElevator. The request is DDIM (the sampler
whose timesteps are integers in every host, so results can be compared across hosts), with the
checkpoint selected per request; the standalone pipeline loads the same file and replays the job's
noise draws (`WebUIJobNoise`). Prints the frame differences in uint8 levels for every pair.

    .venv/bin/python tools/compare_hosts.py --checkpoint /path/sd15.safetensors --t2v /path/tiny-zeroscope \
        --host a1111=http://127.0.0.1:7861 --host forge=http://127.0.0.1:7881
"""

from __future__ import annotations

import argparse
import base64
import io
import itertools
import json
import os
import sys
import time
import urllib.request

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # lib_elevator, run from anywhere
PROMPT, NEGATIVE = "a lighthouse in a storm", "blurry"


def post(url: str, path: str, payload=None):
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=3600) as response:
        return json.loads(response.read())


def host_frames(url: str, checkpoint: str, t2v: str, args) -> np.ndarray:
    name = os.path.splitext(os.path.basename(checkpoint))[0]
    titles = [m["title"] for m in post(url, "/sdapi/v1/sd-models") if m["model_name"] == name]
    if not titles:
        raise SystemExit(f"{url} does not list a checkpoint named {name}")
    ve = {"enable": True, "t2v_model": os.path.basename(t2v.rstrip("/")), "frames": args.frames,
          "refine_points": args.refine_points, "t2v_steps": args.t2v_steps, "formats": ["PNG"]}
    payload = dict(prompt=PROMPT, negative_prompt=NEGATIVE, steps=args.steps, cfg_scale=7.5, width=args.size,
                   height=args.size, seed=args.seed, sampler_name="DDIM", batch_size=1, n_iter=1,
                   override_settings={"sd_model_checkpoint": titles[0]}, override_settings_restore_afterwards=True,
                   alwayson_scripts={"VideoElevator": {"args": [ve]}})
    body = post(url, "/sdapi/v1/txt2img", payload)
    return np.stack([np.array(Image.open(io.BytesIO(base64.b64decode(i))).convert("RGB")) for i in body["images"]])


def standalone_frames(checkpoint: str, t2v_path: str, args) -> np.ndarray:
    from lib_elevator.loaders import load_t2i
    from lib_elevator.noise import WebUIJobNoise
    from lib_elevator.settings import Settings
    from lib_elevator.standalone import Job, generate
    from lib_elevator.t2v.registry import load_t2v

    settings = Settings(frames=args.frames, refine_points=args.refine_points, t2v_steps=args.t2v_steps)
    job = Job(PROMPT, NEGATIVE, args.size, args.size, args.steps, 7.5, args.seed, schedule="webui-ddim")
    return generate(load_t2i(checkpoint), load_t2v(t2v_path), job, settings, noise=WebUIJobNoise(args.seed)).frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="the checkpoint file (same file name in every host)")
    parser.add_argument("--t2v", required=True, help="the T2V model (same name in every host's models/VideoElevator)")
    parser.add_argument("--host", action="append", default=[], help="NAME=URL, repeatable")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--refine-points", default="25%,75%")
    parser.add_argument("--t2v-steps", type=int, default=3)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()

    frames = {}
    for spec in args.host:
        name, url = spec.split("=", 1)
        start = time.perf_counter()
        frames[name] = host_frames(url.rstrip("/"), args.checkpoint, args.t2v, args)
        print(f"{name}: {len(frames[name])} frames in {time.perf_counter() - start:.0f} s")
    start = time.perf_counter()
    frames["standalone"] = standalone_frames(args.checkpoint, args.t2v, args)
    print(f"standalone: {len(frames['standalone'])} frames in {time.perf_counter() - start:.0f} s")
    print("| pair | max | mean | values that differ |\n| --- | --- | --- | --- |")
    for a, b in itertools.combinations(frames, 2):
        diff = np.abs(frames[a].astype(int) - frames[b].astype(int))
        print(f"| {a} vs {b} | {diff.max()} | {diff.mean():.4f} | {(diff != 0).sum()} of {diff.size} |")


if __name__ == "__main__":
    main()
