"""Overlapping temporal windows: a video longer than a model's window, processed window by window and
blended back into one (pure tensor functions).

A T2V model is trained on clips of a fixed length (16 frames for ModelScope, AnimateDiff, LaVie and
VideoCrafter2, 24 for ZeroScope; a motion module has at most 32 positions). A longer video is cut into
windows of that length that overlap by `overlap` frames; each window is predicted on its own and the
predictions are averaged with weights that ramp linearly across every overlap, so where two windows
meet the result moves from one to the other over the overlap instead of jumping. Blending happens at
every model call (the noise prediction of each step), so the whole clip follows one trajectory.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def window_starts(frames: int, window: int, overlap: int) -> list[int]:
    """First frame of every window: a stride of `window - overlap`, the last window flush with the end
    (it may then overlap its neighbour by more than `overlap`)."""
    check_windows(window, overlap)
    if frames <= window:
        return [0]
    stride = window - overlap
    starts = list(range(0, frames - window + 1, stride))
    if starts[-1] + window < frames:
        starts.append(frames - window)
    return starts


def check_windows(window: int, overlap: int) -> None:
    if window < 1:
        raise ValueError(f"a window needs at least 1 frame, got {window}")
    if not 0 <= overlap < window:
        raise ValueError(f"the overlap must be at least 0 and less than the window ({window}), got {overlap}")


def window_weights(window: int, overlap: int, first: bool, last: bool) -> torch.Tensor:
    """(window,) blending weights: 1 inside, rising over the first `overlap` frames (unless this is the
    first window) and falling over the last `overlap` ones (unless it is the last), as 1/(O+1) ... O/(O+1).
    Two windows overlapping by exactly O frames then weigh each frame to a total of 1."""
    weights = torch.ones(window, dtype=torch.float64)
    ramp = torch.arange(1, overlap + 1, dtype=torch.float64) / (overlap + 1)
    if overlap and not first:
        weights[:overlap] = ramp
    if overlap and not last:
        weights[window - overlap :] = ramp.flip(0)
    return weights


def in_windows(predict: Callable[[torch.Tensor], torch.Tensor], frames: torch.Tensor, window: int,
               overlap: int) -> torch.Tensor:
    """`predict` applied to overlapping windows of `frames` (F, ...) along the first axis and blended:
    the weighted mean, per frame, of the predictions of the windows holding it. One window (F <= window)
    is `predict(frames)` itself."""
    count = frames.shape[0]
    starts = window_starts(count, window, overlap)
    if len(starts) == 1:
        return predict(frames)
    total = weight_sum = None
    for k, start in enumerate(starts):
        out = predict(frames[start : start + window])
        weights = window_weights(window, overlap, first=k == 0, last=k == len(starts) - 1)
        weights = weights.to(out.device, out.dtype).view(-1, *([1] * (out.dim() - 1)))
        if total is None:
            total = out.new_zeros((count, *out.shape[1:]))
            weight_sum = out.new_zeros((count, *([1] * (out.dim() - 1))))
        total[start : start + window] += weights * out
        weight_sum[start : start + window] += weights
    return total / weight_sum
