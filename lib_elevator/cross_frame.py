"""Cross-frame attention: self-attention whose keys and values come from an anchor frame.

The UNet sees a batch made of groups of F consecutive rows, one row per frame (for example the
uncond group then the cond group under classifier-free guidance, or any multiple of F). Each row
keeps its own queries; its keys/values are taken from the anchor rows of its own group:

- "first": the first frame of the group (the paper);
- "first_prev": the first frame and the previous frame, concatenated along the token axis.

With F = 1 and the "first" anchor this is ordinary self-attention.
"""

from __future__ import annotations

import contextlib

import torch

ANCHORS = ("first", "first_prev")


def check_anchor(anchor: str) -> str:
    if anchor not in ANCHORS:
        raise ValueError(f"anchor must be one of {', '.join(ANCHORS)}; got {anchor!r}")
    return anchor


def anchor_context(hidden_states: torch.Tensor, frames: int, anchor: str = "first") -> torch.Tensor:
    """Keys/values source for every row of `hidden_states` (B, N, C).

    Returns (B, N, C) for "first" and (B, 2N, C) for "first_prev".
    """
    check_anchor(anchor)
    rows = hidden_states.shape[0]
    if frames < 1 or rows % frames:
        raise ValueError(
            f"cross-frame attention got a batch of {rows} rows, which is not a whole number of groups of "
            f"{frames} frames; frames of different videos or guidance halves would mix"
        )
    if frames == 1 and anchor == "first":
        return hidden_states
    index = torch.arange(rows, device=hidden_states.device)
    first = index - index % frames
    if anchor == "first":
        return hidden_states[first]
    previous = torch.maximum(index - 1, first)
    return torch.cat([hidden_states[first], hidden_states[previous]], dim=1)


class CrossFrameAttnProcessor:
    """diffusers attention processor for self-attention (`attn1`) layers.

    It hands the anchor context to diffusers' own scaled-dot-product processor as if it were the
    encoder states, so the projection, heads, residual and norms stay exactly the library's.
    """

    def __init__(self, frames: int, anchor: str = "first"):
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.frames = frames
        self.anchor = check_anchor(anchor)
        self.inner = AttnProcessor2_0()

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs
    ):
        if hidden_states.ndim == 4:  # conv-shaped input: the inner processor flattens it the same way
            b, c, h, w = hidden_states.shape
            tokens = hidden_states.view(b, c, h * w).transpose(1, 2)
        else:
            tokens = hidden_states
        if attn.group_norm is not None:
            tokens = attn.group_norm(tokens.transpose(1, 2)).transpose(1, 2)
        context = anchor_context(tokens, self.frames, self.anchor)
        return self.inner(attn, hidden_states, encoder_hidden_states=context, attention_mask=attention_mask, temb=temb)


@contextlib.contextmanager
def cross_frame_attention(unet, frames: int, anchor: str = "first"):
    """Turn every self-attention layer of a diffusers 2-D UNet into cross-frame attention for the
    duration of the block; the previous processors are restored on exit, error or interrupt."""
    saved = dict(unet.attn_processors)
    processor = CrossFrameAttnProcessor(frames, anchor)
    patched = {name: (processor if name.endswith("attn1.processor") else proc) for name, proc in saved.items()}
    unet.set_attn_processor(patched)
    try:
        yield processor
    finally:
        unet.set_attn_processor(saved)


def grouped(denoise, processor: CrossFrameAttnProcessor, group: int):
    """`denoise` with the cross-frame groups of `processor` set to `group` rows for its calls (the
    authors' inversion: two groups of F/2 frames)."""

    def run(x, sigma):
        saved = processor.frames
        processor.frames = group
        try:
            return denoise(x, sigma)
        finally:
            processor.frames = saved

    return run
