"""Cross-frame attention inside the WebUI's own UNet (ldm for SD1/SD2, sgm for SDXL).

Every `BasicTransformerBlock.attn1` of the loaded UNet gets an instance-level `forward` that builds
the anchor context and calls the class's *current* `forward` with it, so whichever optimised
attention the host selected (xformers, sdp, sub-quadratic, ...) does the work, and LoRA and
hypernetworks apply as usual. The module objects are not replaced (their names matter to LoRA).

The wrappers are removed again after every job (`remove`), only when they are still ours: an
extension that wrapped on top of us keeps its wrapper.
"""

from __future__ import annotations

import contextlib

from lib_elevator.cross_frame import anchor_context

MARK = "_videoelevator_cross_frame"
BLOCK_CLASS = "BasicTransformerBlock"


def is_transformer_block(module) -> bool:
    """ldm's or sgm's BasicTransformerBlock, or a class made from it on the fly.

    Token merging (Settings > Optimizations > Token merging ratio; the host applies tomesd 0.1.3 for the
    job and removes it afterwards) swaps each block's class for `ToMeBlock(BasicTransformerBlock)`, so the
    name is looked for along the MRO. What tomesd changes for cross-frame attention: its `_forward`
    feeds attn1 `m_a(norm1(x))`: each row's tokens merged to the same count for every row (one src/dst
    partition for the batch, the top-left token of every 2x2 cell as dst since the host turns tomesd's
    random partition off; the matching is computed per row), and un-merges attn1's output per row. The batch rows stay as they were (cond frames, then uncond frames), so the groups of F rows
    still hold; the anchor row's merged tokens become every frame's keys/values: the frames attend to a
    merged (downsampled) version of the anchor frame, as plain ToMe self-attention attends to a merged
    version of its own frame. Only blocks at the levels tomesd merges (max_downsample 1: the
    full-resolution ones) see fewer tokens; sgm's forward calls the same `_forward(x, context)`.
    """
    return any(cls.__name__ == BLOCK_CLASS for cls in type(module).__mro__)


def self_attention_modules(unet) -> list:
    """The attn1 modules of every transformer block (ldm or sgm, token-merged or not), skipping blocks
    whose attn1 is cross-attention (`disable_self_attn`)."""
    found = []
    for module in unet.modules():
        if not is_transformer_block(module) or not hasattr(module, "attn1"):
            continue
        if getattr(module, "disable_self_attn", False):
            continue
        found.append(module.attn1)
    return found


def make_forward(attn, frames: int, anchor: str, chunks=None):
    state = {"active": True, "frames": frames}  # "frames": rows per anchor group (see `grouped`)

    def forward(x, context=None, mask=None, **kwargs):
        if context is None and state["active"]:
            if chunks is not None and chunks.current is not None:  # a chunk of the frames (chunked_unet)
                context = chunks.context(x, id(attn))
            else:
                context = anchor_context(x, state["frames"], anchor)
        return type(attn).forward(attn, x, context=context, mask=mask, **kwargs)

    forward.state = state
    return forward


def install(unet, frames: int, anchor: str, chunks=None) -> list:
    """Patch the UNet's self-attention; returns the patched modules (for `remove`). With `chunks`
    (a `cross_frame.FrameChunks` that is active) the UNet's own forward runs the frames chunk by chunk
    too, and is listed first."""
    modules = self_attention_modules(unet)
    if not modules:
        raise RuntimeError("VideoElevator found no self-attention layers in the loaded UNet (unsupported model)")
    for attn in modules:
        remove([attn])  # a second install (the hires pass) replaces ours instead of stacking on it
        attn.forward = make_forward(attn, frames, anchor, chunks)
        setattr(attn, MARK, attn.forward)
    remove([unet])
    if chunks is not None and chunks.active:
        unet.forward = chunked_forward(unet, chunks)
        setattr(unet, MARK, unet.forward)
        return [unet, *modules]
    return modules


def chunked_forward(unet, chunks):
    """The UNet's forward over a batch of whole frame groups, `chunks.chunk` frames at a time: every
    tensor argument with a row per batch entry (x, timesteps, context, SDXL's y, ...) is cut to the
    chunk's rows. Other batches (not whole groups of the job's frames) pass through unchanged."""
    state = {"active": True}

    def forward(*args, **kwargs):
        rows = args[0].shape[0]
        if not state["active"] or rows % chunks.frames:
            return type(unet).forward(unet, *args, **kwargs)
        names = list(kwargs)

        def call(*values):
            return type(unet).forward(unet, *values[: len(args)], **dict(zip(names, values[len(args) :])))

        return chunks.run(call, rows, *args, *kwargs.values())

    forward.state = state
    return forward


@contextlib.contextmanager
def grouped(modules, group: int):
    """Anchor groups of `group` rows in the patched modules for a while (the authors' inversion: two
    groups of F/2 frames), then back to what they were."""
    states = [attn.__dict__[MARK].state for attn in modules if MARK in attn.__dict__]
    states = [state for state in states if "frames" in state]
    saved = [state["frames"] for state in states]
    for state in states:
        state["frames"] = group
    try:
        yield
    finally:
        for state, frames in zip(states, saved):
            state["frames"] = frames


def remove(modules) -> None:
    """Undo `install`. Our wrapper is switched off (it then passes every call through unchanged) and
    taken out when it is still the module's forward; if another extension wrapped it in turn, that
    extension's wrapper stays and keeps calling ours, now inert."""
    for attn in modules:
        ours = attn.__dict__.get(MARK)
        if ours is None:
            continue
        ours.state["active"] = False
        if attn.__dict__.get("forward") is ours:
            del attn.forward
        delattr(attn, MARK)


def remove_everywhere(unet) -> int:
    """Defensive clean-up of any wrapper of ours left on `unet` (e.g. after a crash)."""
    leftovers = [module for module in [unet, *self_attention_modules(unet)] if MARK in module.__dict__]
    remove(leftovers)
    return len(leftovers)
