"""Cross-frame attention as a Forge attn1 patch (pure: no Forge imports, so CI tests it directly).

Forge calls every attn1 patch of the sampling clone as `patch(n, context, value, extra_options)` before
a transformer block's self-attention and the block then attends `n` to the returned context/value
with Forge's own kernel (LoRA and other patches still apply). A UNet call holds
`len(extra_options["cond_or_uncond"])` chunks of the same size, one per guidance half (uncond = 1
first, then cond = 0, as Forge batches them; a memory-starved host runs each half as its own call),
the frames in order inside each chunk. The patch hands every row its anchor frame's tokens, chunk by
chunk, and refuses a call whose rows are not whole chunks of our frames (another extension re-sliced
the batch), since frames of different chunks would then attend to each other.

Forge deep-copies `model_options` when it clones the patcher (the hires pass, other extensions), so
the patch is a plain closure: a copy keeps the same function object and its cells (the group
setting), and never drags an object with it.
"""

from __future__ import annotations

import contextlib

from lib_elevator.cross_frame import anchor_context
from lib_elevator.errors import UserError


class RowLayoutError(UserError):
    """A UNet call whose rows are not whole chunks of the job's frames."""


def chunk_rows(rows: int, extra_options: dict, frames: int) -> int:
    """The rows of one guidance chunk, checked against the job's frame count."""
    chunks = len(extra_options.get("cond_or_uncond") or [0])
    if rows % chunks or rows // chunks != frames:
        raise RowLayoutError(
            f"a UNet call of Forge had {rows} rows in {chunks} guidance chunk(s), not {frames} frames per "
            "chunk: another extension changed the batch (turn it off for VideoElevator jobs)"
        )
    return frames


def make_attn1_patch(frames: int, anchor: str, chunks=None):
    """The attn1 patch and its group setting (`state["group"]`: rows per anchor group, normally all
    frames; the authors' inversion uses two groups of F/2). With `chunks` running a chunk of the frames
    (`make_chunked_wrapper`), the anchor context comes from it."""
    state = {"group": frames}

    def attn1_patch(n, context, value, extra_options):
        if chunks is not None and chunks.current is not None:
            start, stop = chunks.current
            chunk_rows(n.shape[0], extra_options, stop - start)
            layer = (*extra_options.get("block", ()), extra_options.get("block_index"),
                     extra_options.get("transformer_index"))
            return n, chunks.context(context, (layer, "k")), chunks.context(value, (layer, "v"))
        chunk_rows(n.shape[0], extra_options, frames)
        group = state["group"]
        return n, anchor_context(context, group, anchor), anchor_context(value, group, anchor)

    attn1_patch.videoelevator_state = state
    return attn1_patch


@contextlib.contextmanager
def grouped(patch, group: int):
    state = patch.videoelevator_state
    saved = state["group"]
    state["group"] = group
    try:
        yield
    finally:
        state["group"] = saved


def make_chunked_wrapper(chunks):
    """A `model_function_wrapper` that runs each UNet call `chunks.chunk` frames at a time: the input,
    the timesteps and every conditioning tensor with a row per batch entry are cut to the chunk's rows."""

    def wrapper(apply_model, args):
        x, timestep, c = args["input"], args["timestep"], args["c"]
        rows = x.shape[0]
        keys = [key for key, value in c.items() if hasattr(value, "shape") and value.dim() and value.shape[0] == rows]

        def call(x_part, t_part, *values):
            return apply_model(x_part, t_part, **{**c, **dict(zip(keys, values))})

        return chunks.run(call, rows, x, timestep, *(c[key] for key in keys))

    return wrapper


def make_post_cfg_function(on_cond_output):
    """A `sampler_post_cfg_function` that reports each call's input (k-form) and cond prediction and
    leaves the guided result as it is."""

    def post_cfg(args):
        on_cond_output(args["input"], args["cond_denoised"])
        return args["denoised"]

    return post_cfg
