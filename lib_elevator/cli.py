"""Command line: `python -m lib_elevator generate ...`, `... generate --demo`, `... models DIR`,
`... convert PATH` (a pickled single-file T2V model -> a local .safetensors).

Errors in what the user gave (paths, settings) print one line and exit with status 2; there is
no traceback for those.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from lib_elevator.settings import FORMATS, PRESET_STEPS, PRESETS, Settings, SettingsError

DEMO_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "videoelevator", "demo-models")


def _lora(text: str) -> tuple[str, float]:
    """PATH or PATH:WEIGHT (a path may itself contain ':', so only a numeric tail is a weight)."""
    path, _, tail = text.rpartition(":")
    try:
        return (path, float(tail)) if path else (text, 1.0)
    except ValueError:
        return text, 1.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lib_elevator", description="VideoElevator: T2I quality, T2V motion."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="make a video", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    gen.add_argument(
        "--demo",
        action="store_true",
        help="use built-in tiny random-weight models (built once, cached); checks the install",
    )
    gen.add_argument("--t2i", help="T2I model: diffusers folder or SD1.5/SD2.1/SDXL checkpoint file")
    gen.add_argument(
        "--t2v",
        help="T2V model: ZeroScope/ModelScope diffusers folder, AnimateDiff motion module, AnimateLCM folder, "
        "VideoCrafter2 model.ckpt, or LaVie lavie_base.pt (converted .safetensors, or their folders)",
    )
    gen.add_argument(
        "--t2v-base",
        help="SD1.x base for AnimateDiff/AnimateLCM and LaVie's text encoder/VAE (default: the T2I model when it is SD1)",
    )
    gen.add_argument(
        "--lora",
        action="append",
        default=[],
        type=_lora,
        metavar="PATH[:WEIGHT]",
        help="LoRA file merged into the T2I model (repeatable)",
    )
    gen.add_argument("--config", help="original .yaml of a single-file T2I checkpoint (default: the .yaml beside it)")
    gen.add_argument(
        "--tokenizer",
        metavar="DIR",
        help="tokenizer folder (vocab.json + merges.txt) for a T2I checkpoint that carries none "
        "(default: CLIP's vocabulary from open_clip_torch)",
    )
    gen.add_argument("--allow-pickle", action="store_true", help="allow .ckpt/.pt weights (restricted unpickler)")
    gen.add_argument("--prompt", default="", help="what the video shows")
    gen.add_argument("--negative-prompt", default="")
    gen.add_argument("--preset", choices=list(PRESETS), default="ZeroScope-like")
    gen.add_argument("--frames", type=int, default=None, help="frames (default 16; demo 8)")
    gen.add_argument("--width", type=int, default=None, help="width in pixels (default 512; demo 64)")
    gen.add_argument("--height", type=int, default=None, help="height in pixels (default 512; demo 64)")
    gen.add_argument("--steps", type=int, default=None, help="T2I steps (default: the preset's, 50 or 30; demo 20)")
    gen.add_argument("--guidance", type=float, default=7.5, help="T2I classifier-free guidance")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--schedule", choices=["diffusers-ddim", "webui-ddim"], default="diffusers-ddim")
    gen.add_argument("--refine-points", help="e.g. '10%%,30%%,50%%,70%%' or steps remaining '45,35,25,15'")
    gen.add_argument("--t2v-steps", type=int, help="T2V steps N at each refine point")
    gen.add_argument("--t2v-guidance", type=float)
    gen.add_argument("--noise-mix", type=float, help="alpha: weight of the noise shared by all frames")
    gen.add_argument("--filter-method", choices=["gaussian", "butterworth", "ideal", "box"])
    gen.add_argument("--filter-spatial", type=float, help="spatial cut-off d_s")
    gen.add_argument("--filter-temporal", type=float, help="temporal cut-off d_t")
    gen.add_argument("--anchor", choices=["first", "first_prev"], help="cross-frame attention anchor")
    gen.add_argument("--inversion-steps", type=int, help="0 = full inversion (the paper); fewer is faster")
    gen.add_argument("--no-pnp", dest="pnp", action="store_false", default=None, help="skip the PnP correction")
    gen.add_argument(
        "--inversion-prompt",
        choices=["empty", "negative"],
        help="condition the inversion on the empty prompt, or the negative one as the authors' code",
    )
    gen.add_argument(
        "--compat",
        choices=["none", "authors"],
        help="authors: reproduce the authors' code (their inversion anchor groups and prompt, T2V step grid "
        "and SDEdit start, filter masks; see docs/algorithm.md)",
    )
    gen.add_argument("--t2v-fps", type=int, help="frame rate a VideoCrafter2 model is conditioned on (default 28)")
    gen.add_argument("--t2v-window", type=int,
                     help="frames the T2V model sees at once (default 0: its native length, 16 or 24); longer videos "
                          "are refined in overlapping windows")
    gen.add_argument("--t2v-overlap", type=int, help="frames shared by neighbouring T2V windows (default 4)")
    gen.add_argument("--frame-chunk", type=int,
                     help="T2I frames per UNet call, sharing the anchor (default 0: by free GPU memory, all on a CPU)")
    gen.add_argument("--t2v-prompt", help="prompt for the T2V model (default: --prompt)")
    gen.add_argument("--t2v-negative-prompt", help="negative prompt for the T2V model (default: --negative-prompt)")
    gen.add_argument("--fps", type=int, default=8)
    gen.add_argument("--formats", help=f"comma list of {', '.join(FORMATS)} (default: from --out's extension)")
    gen.add_argument("--out", default=os.path.join("outputs", "videoelevator.mp4"), help="output video path")
    gen.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda when available)")
    gen.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    gen.add_argument("--offload-t2v", action="store_true", help="keep the T2V model on the CPU between refine steps")
    gen.add_argument(
        "--t2v-ff-chunk",
        type=int,
        default=0,
        metavar="N",
        help="run the T2V UNet's feed-forward layers N rows at a time (ZeroScope/ModelScope; the authors use 8): "
        "less GPU memory, same result; 0 = off",
    )

    models = sub.add_parser("models", help="list the T2V models found in folders")
    models.add_argument("folders", nargs="+")
    models.add_argument("--allow-pickle", action="store_true", help="count pickled (.ckpt/.pt) models as usable")

    convert = sub.add_parser(
        "convert",
        help="write a VideoCrafter2 or LaVie checkpoint as a local .safetensors (loads faster, no --allow-pickle)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    convert.add_argument(
        "path", help="the model: a VideoCrafter2 model.ckpt or LaVie lavie_base.pt, or the folder holding it"
    )
    convert.add_argument(
        "--out",
        help="the .safetensors to write (default: beside the source, <stem>.fp16.safetensors for float16)",
    )
    convert.add_argument("--dtype", choices=["float16", "float32"], default="float16", help="dtype of the file written")
    convert.add_argument(
        "--allow-pickle",
        action="store_true",
        help="read a pickled source (.ckpt) with torch's restricted weights-only loader; the file written needs no "
        "opt-in",
    )
    return parser


def settings_from_args(args) -> Settings:
    settings = Settings().with_preset(args.preset)
    overrides = {
        name: getattr(args, name)
        for name in (
            "refine_points",
            "t2v_steps",
            "t2v_guidance",
            "noise_mix",
            "filter_method",
            "filter_spatial",
            "filter_temporal",
            "anchor",
            "inversion_steps",
            "pnp",
            "inversion_prompt",
            "t2v_prompt",
            "t2v_negative_prompt",
            "compat",
            "t2v_fps",
            "t2v_window",
            "t2v_overlap",
            "frame_chunk",
        )
        if getattr(args, name) is not None
    }
    overrides["frames"] = args.frames or (8 if args.demo else 16)
    overrides["fps"] = args.fps
    overrides["formats"] = output_formats(args)
    return settings.replace(**overrides).validate()


def output_formats(args) -> tuple[str, ...]:
    if args.formats:
        return tuple(f.strip().upper() for f in args.formats.split(",") if f.strip())
    ext = os.path.splitext(args.out)[1].lstrip(".").upper()
    return (ext,) if ext in FORMATS else ("MP4",)


def demo_models(cache: str = DEMO_CACHE) -> tuple[str, str]:
    from lib_elevator.tiny import demo_folders

    return demo_folders(cache)


def run_generate(args) -> int:
    from tqdm import tqdm

    from lib_elevator.loaders import load_t2i
    from lib_elevator.standalone import Job, generate
    from lib_elevator.t2v.registry import load_t2v
    from lib_elevator.video_io import write_video

    settings = settings_from_args(args)
    if args.demo:
        demo_t2i, demo_t2v = demo_models()
        args.t2i, args.t2v = args.t2i or demo_t2i, args.t2v or demo_t2v
        args.prompt = args.prompt or "a lighthouse in a storm, waves crashing"
    if not args.t2i or not args.t2v:
        raise SettingsError("--t2i/--t2v", "give both model paths, or --demo for the built-in tiny models")
    if not args.prompt:
        raise SettingsError("--prompt", "say what the video should show")
    steps = args.steps or (20 if args.demo else PRESET_STEPS[args.preset])
    size = 64 if args.demo else 512
    job = Job(
        args.prompt,
        args.negative_prompt,
        args.width or size,
        args.height or size,
        steps,
        args.guidance,
        args.seed,
        args.schedule,
    )
    from lib_elevator.dtypes import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)

    started = time.time()
    print(f"loading T2I {args.t2i}", file=sys.stderr)
    t2i = load_t2i(
        args.t2i,
        loras=args.lora,
        device=device,
        dtype=dtype,
        config_file=args.config,
        tokenizer_dir=args.tokenizer,
        allow_pickle=args.allow_pickle,
    )
    print(f"loading T2V {args.t2v}", file=sys.stderr)
    base = args.t2v_base or (t2i if t2i.kind == "sd1" else None)
    t2v = load_t2v(
        args.t2v, base=base, device="cpu" if args.offload_t2v else device, dtype=dtype, allow_pickle=args.allow_pickle
    )
    if args.t2v_ff_chunk:
        if not t2v.supports_forward_chunking:
            raise SettingsError("--t2v-ff-chunk", f"{t2v.kind} models do not run their feed-forward layers in chunks")
        t2v.enable_forward_chunking(args.t2v_ff_chunk)

    with tqdm(unit="call", desc="VideoElevator", file=sys.stderr) as bar:
        result = generate(
            t2i,
            t2v,
            job,
            settings,
            progress=lambda stage: (bar.set_postfix_str(stage), bar.update()),
            on_plan=lambda plan: setattr(bar, "total", plan.total_calls(settings)),
            offload_t2v=args.offload_t2v,
        )
    base_path = os.path.splitext(args.out)[0]
    written = write_video(result.frames, base_path, settings.formats, settings.fps)
    for fmt, path in written.paths.items():
        print(f"{fmt}: {path}")
    for fmt, error in written.errors.items():
        print(f"{fmt} could not be written ({error}); the other outputs are kept", file=sys.stderr)
    print(
        f"{settings.frames} frames {job.width}x{job.height} in {time.time() - started:.1f} s "
        f"(model calls: {result.calls})",
        file=sys.stderr,
    )
    return 1 if written.errors and not written.paths else 0


def run_models(args) -> int:
    from lib_elevator.t2v.registry import list_t2v_models

    found = list_t2v_models(args.folders, allow_pickle=args.allow_pickle, include_unusable=True)
    for model in found:
        if model["kind"]:
            print(f"{model['kind']:12s} {model['name']:40s} {model['path']}")
        else:  # a T2V model that cannot run as it is: say why (e.g. a pickle without --allow-pickle)
            print(f"{'unusable':12s} {model['name']:40s} {model['error']}")
    if not found:
        print("no T2V models found in " + ", ".join(args.folders), file=sys.stderr)
    return 0


# T2V kinds that `convert` handles: kind -> (module, function(path, out, dtype, allow_pickle) -> written path).
CONVERTERS = {
    "videocrafter2": ("lib_elevator.t2v.videocrafter", "convert_checkpoint"),
    "lavie": ("lib_elevator.t2v.lavie", "convert_checkpoint"),
}


def run_convert(args) -> int:
    import importlib

    import torch

    from lib_elevator.errors import ModelError
    from lib_elevator.t2v.registry import detect_t2v_kind
    from lib_elevator.weights import PickleRefusedError

    try:
        kind = detect_t2v_kind(args.path, args.allow_pickle)
    except PickleRefusedError:
        raise SettingsError(
            "--allow-pickle",
            f"{args.path} holds pickled weights; converting means reading them once, so add --allow-pickle (they are "
            "read with torch's restricted weights-only loader, and the .safetensors written needs no opt-in)",
        ) from None
    if kind not in CONVERTERS:
        raise ModelError(
            f"{args.path} ({kind}): there is nothing to convert; convert handles "
            f"{', '.join(CONVERTERS)} checkpoints, and this model loads as it is"
        )
    module, function = CONVERTERS[kind]
    started = time.time()
    print(f"converting {kind} {args.path}", file=sys.stderr)
    out = getattr(importlib.import_module(module), function)(
        args.path, args.out, getattr(torch, args.dtype), args.allow_pickle
    )
    print(out)
    print(f"{os.path.getsize(out) / 2**30:.2f} GiB in {time.time() - started:.1f} s", file=sys.stderr)
    return 0


COMMANDS = {"generate": run_generate, "models": run_models, "convert": run_convert}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (SettingsError, ValueError, OSError) as e:  # bad settings or model files: say what, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
