"""Wall time inside a real WebUI host: a VideoElevator job vs a plain batch of the same frames and steps.

    python -m bench.webui --url http://127.0.0.1:7861 --t2v-model NAME [--frames 8 --steps 6 ...]

Needs a running WebUI with the extension (tools/webui_host_test.sh or docs/webui-testing.md; for
realistic sizes start it with the full-size random SD1.5 checkpoint, `start.sh --model full`, and put a
full-size ZeroScope-like folder from `python -m bench.models` into models/VideoElevator). Runs, in
turns: a plain txt2img batch (batch size = frames), then the same request with VideoElevator enabled,
`--repeat` times each, after one untimed warm-up request (the host loads its checkpoint on the first
request), and prints the best times and their ratio. The first enabled job loads the T2V model; later
ones must not (the table shows the first and the best enabled job), and no job may make the host reload
its checkpoint (checked in the host's log when --log is given).
"""

from __future__ import annotations

import argparse
import json
import os
import time
import urllib.request


def post(url: str, payload: dict) -> tuple[float, dict]:
    request = urllib.request.Request(
        url + "/sdapi/v1/txt2img", data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=3600) as response:
        body = json.loads(response.read())
    return time.perf_counter() - started, body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:7861")
    parser.add_argument("--t2v-model", required=True, help="a name from GET /videoelevator/v1/models")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--sampler", default="DDIM")
    parser.add_argument("--refine-points", default="10%,60%")
    parser.add_argument("--t2v-steps", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--log", help="the WebUI's log file, to check that no job reloads the checkpoint")
    args = parser.parse_args()

    plain = dict(
        prompt="a lighthouse in a storm, waves crashing",
        negative_prompt="blurry",
        steps=args.steps,
        cfg_scale=7.5,
        width=args.size,
        height=args.size,
        seed=1,
        sampler_name=args.sampler,
        batch_size=args.frames,
        n_iter=1,
    )
    settings = {
        "enable": True,
        "t2v_model": args.t2v_model,
        "frames": args.frames,
        "formats": ["MP4"],
        "refine_points": args.refine_points,
        "t2v_steps": args.t2v_steps,
    }
    elevated = {**plain, "batch_size": 1, "alwayson_scripts": {"VideoElevator": {"args": [settings]}}}
    post(args.url, {**plain, "steps": 2})  # warm-up: the host loads its checkpoint on the first request
    log_start = os.path.getsize(args.log) if args.log else 0

    times = {"plain": [], "elevated": []}
    for _ in range(args.repeat):
        for name, payload in (("plain", plain), ("elevated", elevated)):
            seconds, body = post(args.url, payload)
            assert len(body["images"]) == args.frames, body.get("error")
            times[name].append(seconds)

    print(
        f"WebUI at {args.url}: {args.frames} frames, {args.steps} steps ({args.sampler}), {args.size}x{args.size} px, "
        f"refine {args.refine_points}, N = {args.t2v_steps}, T2V model {args.t2v_model}"
    )
    print("| run | first s | best s |\n|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {values[0]:.1f} | {min(values):.1f} |")
    print(f"ratio VideoElevator / plain (best of {args.repeat}): {min(times['elevated']) / min(times['plain']):.2f}x")
    if args.log:
        with open(args.log, encoding="utf-8", errors="replace") as f:
            f.seek(log_start)
            reloads = [line for line in f if "Loading weights" in line or "Reusing loaded model" in line]
        print(f"host checkpoint (re)loads during the runs: {len(reloads)}")


if __name__ == "__main__":
    main()
