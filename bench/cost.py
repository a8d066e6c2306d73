"""Cost model of the standalone pipeline, counted on the model calls of real runs (tiny models).

Forward hooks on the T2I UNet and the T2V UNet count frame-evaluations (one frame through one UNet
forward; a CFG call on F frames is 2F, a T2V call on one video of F frames with CFG is 2F) in:
  (a) our `generate`,
  (b) a plain T2I batch of the same frames, steps and CFG (a DDIM loop over `T2IModel.denoiser`,
      `bench.common.plain_batch`: `generate` cannot run without refine points),
  (c) the authors' loop (`tests/authors_loop.py`, the tests' oracle) at the same settings,
and the final latents of (a) and (c) are compared in float32 and float64. Then the "fast" options
(fewer inversion steps, PnP off) are counted and compared against the full path.

Run: .venv/bin/python -m bench.cost            (defaults: the paper's ZeroScope settings)
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from bench import models
from bench.common import NEGATIVE, PROMPT, Meters, add_threads_argument, apply_threads, machine, plain_batch, table
from lib_elevator.noise import TorchNoise
from lib_elevator.schedule import ddim_timesteps
from lib_elevator.settings import Settings
from lib_elevator.standalone import Job, generate
from tests.authors_loop import authors_loop_for

# The authors' code at the paper's settings, counted on their pipeline: 302 F for F = 16 (100 F sampling
# with CFG + 116 F inversion + 86 F PnP, 43 calls x 2F).
AUTHORS_T2I_COUNT = 4832
# frames, steps, refine points (steps remaining), N, inversion steps (0 = full), PnP, guidance: the paper's
PAPER_CONFIG = (16, 50, [45, 35, 25, 15], 8, 0, True, 7.5)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--steps", type=int, default=50, help="T2I DDIM steps")
    p.add_argument("--refine", default="45,35,25,15", help="refine points as steps remaining (the authors' form)")
    p.add_argument("--t2v-steps", type=int, default=8, help="N, T2V steps per refine point")
    p.add_argument("--inversion-steps", type=int, default=0, help="0 = full inversion")
    p.add_argument("--no-pnp", dest="pnp", action="store_false", help="PnP correction off")
    p.add_argument("--guidance", type=float, default=7.5, help="T2I CFG scale")
    p.add_argument("--t2v-guidance", type=float, default=7.5)
    p.add_argument("--size", type=int, default=64, help="frame width and height in pixels")
    p.add_argument("--fast", default="1,2,4,8", help="inversion-step counts for the fast-options table ('' skips)")
    p.add_argument("--no-float64", dest="float64", action="store_false", help="skip the float64 comparison")
    p.add_argument("--cache", default=models.CACHE, help="folder of the benchmark models")
    add_threads_argument(p, default=1)  # it counts, it does not time: one thread is fastest on a busy machine
    return p.parse_args(argv)


def classify_authors_calls(log, frames: int, steps: int, remaining: list[int]) -> dict[str, int]:
    """Sort the authors' T2I frame-evaluations by purpose, from the call log (rows, timestep, input).

    Main calls and PnP calls both have 2F rows; a PnP call is the second 2F call at a timestep. The
    inversion's calls have F rows. A PnP call "repeats the main call" when its input equals the main
    call's input (checked on the tensors, not assumed)."""
    index_of = {float(t): i for i, t in enumerate(ddim_timesteps(steps))}
    out = dict(main=0, inversion=0, pnp_at_refine=0, pnp_repeat=0, pnp_uncond=0, pnp_cond=0)
    main_t, main_input = None, None
    for rows, t, sample in log:
        if rows == 2 * frames and t in index_of and t != main_t:
            out["main"] += rows
            main_t, main_input = t, sample
        elif rows == 2 * frames and t == main_t:
            if steps - index_of[t] in remaining:
                out["pnp_at_refine"] += rows  # the refine replaces this step's result
            elif torch.equal(sample, main_input):
                out["pnp_repeat"] += rows  # the same latent at the same level as the main call
            else:
                out["pnp_uncond"] += rows // 2  # combined with guidance 1.0: the uncond half cancels
                out["pnp_cond"] += rows // 2
            main_t = None
        elif rows == frames:
            out["inversion"] += rows
            main_t = None
        else:
            raise RuntimeError(f"unexpected T2I call of {rows} rows at t={t}")
    return out


def run_ours(t2i, t2v, job, settings, meters):
    meters.reset()
    started = time.perf_counter()
    result = generate(t2i, t2v, job, settings, noise=TorchNoise(job.seed), progress=meters.set_stage)
    return result, time.perf_counter() - started


def run_authors(t2i, t2v, job, settings, remaining, meters):
    meters.reset()
    started = time.perf_counter()
    latents, rows = authors_loop_for(t2i, t2v, job, settings, remaining, TorchNoise(job.seed))
    return latents.cpu(), rows, time.perf_counter() - started


def diff(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    d = (a.double() - b.double()).abs()
    return d.max().item(), d.mean().item()


def main(argv=None) -> int:
    args = parse_args(argv)
    apply_threads(args.threads)
    remaining = sorted({int(r) for r in args.refine.split(",")}, reverse=True)
    F = args.frames
    settings = Settings(
        frames=F,
        refine_points=",".join(map(str, remaining)),
        t2v_steps=args.t2v_steps,
        t2v_guidance=args.t2v_guidance,
        inversion_steps=args.inversion_steps,
        pnp=args.pnp,
        compat="authors",  # as the authors' code, so (a) and (c) compute the same thing
    ).validate()
    job = Job(PROMPT, NEGATIVE, args.size, args.size, args.steps, args.guidance, seed=0)
    t2i, t2v, _ = models.load("tiny", cache=args.cache)
    if args.float64:  # copies made before any meter is installed on the originals
        t2i64, t2v64 = copy.deepcopy(t2i).to(dtype=torch.float64), copy.deepcopy(t2v).to(dtype=torch.float64)
    print(f"machine: {machine()}")
    print(
        f"config: {F} frames, {args.steps} steps, refine at {remaining} steps remaining, N = {args.t2v_steps}, "
        f"inversion {'full' if not args.inversion_steps else f'{args.inversion_steps} steps'}, "
        f"PnP {'on' if args.pnp else 'off'}, CFG {args.guidance} (T2V {args.t2v_guidance}), "
        f"{args.size}x{args.size} px; tiny random-weight SD1 + ZeroScope models\n"
    )

    meters = Meters(t2i, t2v, keep_inputs=True)
    ours, ours_s = run_ours(t2i, t2v, job, settings, meters)
    ours_t2i, ours_t2v, ours_stages = meters.t2i.frame_evals, meters.t2v.frame_evals, dict(meters.t2i.by_stage)
    meters.reset()
    plain_batch(t2i, job, F, decode=False)
    plain_t2i = meters.t2i.frame_evals
    authors, authors_rows, authors_s = run_authors(t2i, t2v, job, settings, remaining, meters)
    authors_t2i, authors_t2v = meters.t2i.frame_evals, meters.t2v.frame_evals
    categories = classify_authors_calls(meters.t2i.log, F, args.steps, remaining)
    assert authors_t2i == authors_rows["t2i"] and authors_t2v == authors_rows["t2v"]  # hooks = the loop's own count
    meters.t2i.keep_inputs = False
    meters.t2i.log.clear()

    rows = [
        ["(a) ours: generate", ours_t2i, f"{ours_t2i / F:g} F", ours_t2v, f"{ours_t2i / plain_t2i:.2f}x"],
        ["(b) plain T2I batch", plain_t2i, f"{plain_t2i / F:g} F", 0, "1.00x"],
        ["(c) authors' loop", authors_t2i, f"{authors_t2i / F:g} F", authors_t2v, f"{authors_t2i / plain_t2i:.2f}x"],
    ]
    print(table(["run", "T2I frame-evals", "per frame", "T2V frame-evals", "T2I vs plain"], rows, "Frame-evaluations"))
    config = (F, args.steps, remaining, args.t2v_steps, args.inversion_steps, args.pnp, args.guidance)
    default_config = config == PAPER_CONFIG
    if default_config:
        ok = authors_t2i == AUTHORS_T2I_COUNT
        print(
            f"authors' loop: {authors_t2i} T2I frame-evals; the authors' code: {AUTHORS_T2I_COUNT} -> {'same' if ok else 'DIFFERENT'}"
        )
    print(
        f"ours: {ours_t2i} T2I frame-evals = {ours_t2i / authors_t2i:.1%} of the authors' "
        f"({authors_t2i - ours_t2i} fewer, -{1 - ours_t2i / authors_t2i:.1%})"
    )
    print()

    stage_rows = [[stage, evals, f"{evals / F:g} F"] for stage, evals in ours_stages.items() if stage != "t2v"]
    print(table(["our T2I evaluations by stage", "frame-evals", "per frame"], stage_rows))
    labels = {
        "main": "main calls (CFG: uncond + cond)",
        "inversion": "inversion (un-guided)",
        "pnp_at_refine": "PnP at a refine step (result replaced by the refine)",
        "pnp_repeat": "PnP right after a refine (same input as the main call)",
        "pnp_uncond": "PnP uncond halves (guidance 1.0: cancel out)",
        "pnp_cond": "PnP cond halves (needed)",
    }
    wasted = categories["pnp_at_refine"] + categories["pnp_repeat"] + categories["pnp_uncond"]
    cat_rows = [[labels[k], v, f"{v / F:g} F", f"{v / authors_t2i:.1%}"] for k, v in categories.items()]
    cat_rows.append(["total not needed", wasted, f"{wasted / F:g} F", f"{wasted / authors_t2i:.1%}"])
    print(
        table(["authors' T2I evaluations, classified from the call log", "frame-evals", "per frame", "share"], cat_rows)
    )
    print(
        f"unneeded evaluations: {wasted} = {wasted / authors_t2i:.1%} of the authors' count, "
        f"= {wasted / ours_t2i:.1%} of ours (the authors' loop makes {authors_t2i / ours_t2i - 1:.1%} more than needed); "
        f"authors' - unneeded = {authors_t2i - wasted} (ours: {ours_t2i})"
    )
    if authors_t2i - wasted == ours_t2i:
        print(
            f"  With the same output the least is {authors_t2i - wasted}, which is ours. Every evaluation left is needed:\n"
            f"  - main: {ours_stages.get('t2i', 0)} = steps x 2F (CFG), as in the plain batch;\n"
            f"  - inversion: {ours_stages.get('inversion', 0)} = one un-guided F-row call per level of each full "
            "inversion path (each step starts from the previous one; the levels are also PnP's reference);\n"
            f"  - PnP: {ours_stages.get('pnp', 0)} = cond-only F-row calls at each step after the first one following "
            "a refine while the trajectory lasts: D_cond(inverted latent at sigma_j) is evaluated nowhere else "
            "(the inversion evaluated the latent one level lower, with the inversion prompt).\n"
            "  Below that only the options that change the output: fewer inversion steps or PnP off (table below)."
        )
    print()

    print("Final latents, ours vs the authors' loop (same seed, same models):")
    a_max, a_mean = diff(ours.latents, authors)
    scale = authors.double().abs()
    print(
        f"  float32: max |diff| {a_max:.2e}, mean {a_mean:.2e}; latents: max |x| {scale.max().item():.3g}, "
        f"mean |x| {scale.mean().item():.3g} (relative max diff {a_max / scale.max().item():.1e})"
    )
    if args.float64:
        meters64 = Meters(t2i64, t2v64)
        ours64, _ = run_ours(t2i64, t2v64, job, settings, meters64)
        authors64, _, _ = run_authors(t2i64, t2v64, job, settings, remaining, meters64)
        b_max, b_mean = diff(ours64.latents, authors64)
        c_max, c_mean = diff(ours.latents, ours64.latents)
        print(f"  float64: max |diff| {b_max:.2e}, mean {b_mean:.2e}")
        print(f"  ours float32 vs ours float64 (float32 rounding alone): max {c_max:.2e}, mean {c_mean:.2e}")
        meters64.remove()
        del t2i64, t2v64
    print(f"  run times: ours {ours_s:.1f} s, authors' loop {authors_s:.1f} s (tiny models, CPU)\n")

    fast = [int(k) for k in args.fast.split(",") if k.strip()]
    variants = [("full inversion, PnP on (default)", settings)]
    variants += [
        (f"inversion {k} step{'s' if k > 1 else ''}, PnP on", settings.replace(inversion_steps=k)) for k in fast
    ]
    variants += [("full inversion, PnP off", settings.replace(pnp=False))]
    variants += [(f"inversion {k} steps, PnP off", settings.replace(inversion_steps=k, pnp=False)) for k in fast[-1:]]
    fast_rows = []
    reference = ours.latents.double()
    for label, variant in variants:
        if variant == settings:
            result, t2i_evals, t2v_evals = ours, ours_t2i, ours_t2v
        else:
            result, _ = run_ours(t2i, t2v, job, variant, meters)
            t2i_evals, t2v_evals = meters.t2i.frame_evals, meters.t2v.frame_evals
        err_max, err_mean = diff(result.latents, reference)
        fast_rows.append(
            [
                label,
                t2i_evals,
                f"{t2i_evals / F:g} F",
                f"{t2i_evals / plain_t2i:.2f}x",
                t2v_evals,
                f"{err_max:.3g}",
                f"{err_mean:.3g}",
                f"{err_mean / reference.abs().mean().item():.1%}",
            ]
        )
    headers = [
        "variant",
        "T2I frame-evals",
        "per frame",
        "vs plain",
        "T2V",
        "max err",
        "mean err",
        "mean err / mean |x|",
    ]
    print(table(headers, fast_rows, "Fast options (final latents against the default path, float32)"))
    meters.remove()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
