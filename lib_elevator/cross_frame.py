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


class FrameChunks:
    """The frames of a batch run through the UNet `chunk` frames at a time, sharing the anchor's
    keys/values, so the activations held at once grow with the chunk, not with the frame count.

    A batch holds `groups` groups of F frames (the guidance halves). Chunk [start, stop) is the rows of
    those frames in every group. The chunks run in order; at every self-attention layer a chunk takes its
    anchor frames' tokens from its own rows when it holds them, else from the cache the chunk that held
    them filled at that layer (and, for "first_prev", the previous chunk's last frame). Every other layer
    of the UNet works row by row, so the anchor's tokens are the ones an unchunked call computes, and a
    chunked call gives the unchunked result (up to float rounding of smaller batches).
    """

    def __init__(self, frames: int, chunk: int, anchor: str = "first"):
        if chunk < 1:
            raise ValueError(f"a frame chunk needs at least 1 frame; got {chunk}")
        self.frames, self.chunk, self.anchor = frames, min(chunk, frames), check_anchor(anchor)
        self.group = frames  # rows per anchor group (the authors' inversion: F/2)
        self.current: tuple[int, int] | None = None  # the frames of the running chunk
        self.cache: dict = {}  # layer -> {frame index: tokens (groups, N, C)}

    @property
    def active(self) -> bool:
        return self.chunk < self.frames

    @contextlib.contextmanager
    def grouped(self, group: int):
        """Anchor groups of `group` frames for a while (the authors' inversion: two groups of F/2)."""
        saved, self.group = self.group, group
        try:
            yield
        finally:
            self.group = saved

    def ranges(self) -> list[tuple[int, int]]:
        return [(start, min(start + self.chunk, self.frames)) for start in range(0, self.frames, self.chunk)]

    def rows(self, groups: int, start: int, stop: int) -> torch.Tensor:
        """Row indices of frames [start, stop) in every group of a batch of `groups` x F rows."""
        return torch.tensor([g * self.frames + f for g in range(groups) for f in range(start, stop)])

    def run(self, call, rows: int, *row_tensors):
        """`call(*tensors)` over the chunks, each tensor cut to the chunk's rows (tensors whose first axis
        is not `rows` go whole), outputs put back in row order."""
        if rows % self.frames:
            raise ValueError(f"a batch of {rows} rows is not whole groups of {self.frames} frames")
        groups, out = rows // self.frames, None
        try:
            for start, stop in self.ranges():
                self.current = (start, stop)
                index = self.rows(groups, start, stop)
                part = call(*(t[index.to(t.device)] if _is_rows(t, rows) else t for t in row_tensors))
                if out is None:
                    out = part.new_empty((rows, *part.shape[1:]))
                out[index.to(out.device)] = part
        finally:
            self.current, self.cache = None, {}
        return out

    def context(self, tokens: torch.Tensor, layer) -> torch.Tensor:
        """The anchor context of the running chunk's rows (groups x k, N, C) at `layer`."""
        start, stop = self.current
        k = stop - start
        groups = tokens.shape[0] // k
        local = tokens.view(groups, k, *tokens.shape[1:])
        cache = self.cache.setdefault(layer, {})  # anchor frames, and the previous chunk's last frame

        def frame(f: int) -> torch.Tensor:
            return local[:, f - start] if f >= start else cache[f]

        for f in range(start, stop):  # the anchors in this chunk, for the chunks after it
            if f % self.group == 0:
                cache[f] = local[:, f - start]
        columns = []
        for f in range(start, stop):
            anchor = f - f % self.group
            if self.anchor == "first":
                columns.append(frame(anchor))
            else:
                columns.append(torch.cat([frame(anchor), frame(max(f - 1, anchor))], dim=1))
        if start > 0 and (start - 1) % self.group:
            cache.pop(start - 1, None)  # the chunk before's last frame (not an anchor): no longer needed
        cache[stop - 1] = local[:, k - 1]
        return torch.stack(columns, dim=1).reshape(groups * k, *columns[0].shape[1:])


def auto_frame_chunk(frames: int, rows_per_frame: int, latent_area: int, device: torch.device,
                     dtype: torch.dtype) -> int:
    """Frames per UNet call for the memory free on `device`: all of them on a CPU; on a GPU as many as
    keep the call's activations within 80 % of the free memory, by the estimate Forge uses for an SD
    UNet call (1.28 x latent area x element size x 16384 bytes a row with PyTorch attention)."""
    if device.type != "cuda":
        return frames
    free, _ = torch.cuda.mem_get_info(device)
    per_frame = 1.28 * latent_area * torch.finfo(dtype).bits // 8 * 16384 * rows_per_frame
    return max(1, min(frames, int(0.8 * free // per_frame)))


def _is_rows(value, rows: int) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == rows


class CrossFrameAttnProcessor:
    """diffusers attention processor for self-attention (`attn1`) layers.

    It hands the anchor context to diffusers' own scaled-dot-product processor as if it were the
    encoder states, so the projection, heads, residual and norms stay exactly the library's.
    """

    def __init__(self, frames: int, anchor: str = "first", chunks: FrameChunks | None = None):
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.frames = frames
        self.anchor = check_anchor(anchor)
        self.chunks = chunks  # while a chunked call runs, the anchor context comes from it
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
        if self.chunks is not None and self.chunks.current is not None:
            context = self.chunks.context(tokens, id(attn))
        else:
            context = anchor_context(tokens, self.frames, self.anchor)
        return self.inner(attn, hidden_states, encoder_hidden_states=context, attention_mask=attention_mask, temb=temb)


@contextlib.contextmanager
def cross_frame_attention(unet, frames: int, anchor: str = "first", chunks: FrameChunks | None = None):
    """Turn every self-attention layer of a diffusers 2-D UNet into cross-frame attention for the
    duration of the block; the previous processors are restored on exit, error or interrupt."""
    saved = dict(unet.attn_processors)
    processor = CrossFrameAttnProcessor(frames, anchor, chunks)
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
            with processor.chunks.grouped(group) if processor.chunks is not None else contextlib.nullcontext():
                return denoise(x, sigma)
        finally:
            processor.frames = saved

    return run
