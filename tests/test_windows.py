"""Overlapping temporal windows (lib_elevator/windows.py), on predictions whose exact answer is known."""

import pytest
import torch

from lib_elevator.windows import in_windows, window_starts, window_weights


@pytest.mark.parametrize("frames, window, overlap, starts", [
    (16, 16, 4, [0]),
    (10, 16, 4, [0]),
    (40, 16, 4, [0, 12, 24]),
    (48, 16, 4, [0, 12, 24, 32]),  # the last window is flush with the end
    (64, 24, 8, [0, 16, 32, 40]),
    (5, 2, 0, [0, 2, 3]),
])
def test_windows_cover_every_frame_and_end_flush(frames, window, overlap, starts):
    assert window_starts(frames, window, overlap) == starts
    covered = set()
    for start in starts:
        covered |= set(range(start, start + min(window, frames)))
    assert covered == set(range(frames))


def test_a_window_local_identity_gives_back_the_input():
    video = torch.randn(40, 4, 3, 5)
    out = in_windows(lambda chunk: chunk.clone(), video, 16, 4)
    assert torch.allclose(out, video, atol=1e-6)


def test_a_constant_per_window_blends_linearly_across_the_overlap():
    video = torch.zeros(28, 1)
    calls = []

    def predict(chunk):
        calls.append(chunk.shape[0])
        return torch.full_like(chunk, float(len(calls) - 1))  # window k answers k

    out = in_windows(predict, video, 16, 4)[:, 0]
    assert calls == [16, 16]  # windows at 0 and 12: frames 12..15 overlap
    assert out[:12].tolist() == [0.0] * 12 and out[16:].tolist() == [1.0] * 12
    assert torch.allclose(out[12:16], torch.tensor([0.2, 0.4, 0.6, 0.8]))  # (j + 1) / (O + 1)
    steps = torch.diff(out[11:17])
    assert torch.allclose(steps, torch.full_like(steps, 0.2))  # no jump: a straight line from 0 to 1


def test_no_overlap_is_a_plain_split_and_weights_are_ramps():
    video = torch.arange(8.0)[:, None]
    assert torch.equal(in_windows(lambda chunk: chunk * 2, video, 4, 0), video * 2)
    assert window_weights(6, 2, first=False, last=False).tolist() == pytest.approx([1 / 3, 2 / 3, 1, 1, 2 / 3, 1 / 3])
    assert window_weights(6, 2, first=True, last=True).tolist() == [1.0] * 6


@pytest.mark.parametrize("window, overlap", [(0, 0), (8, 8), (8, -1)])
def test_impossible_windows_are_refused(window, overlap):
    with pytest.raises(ValueError, match="window|overlap"):
        window_starts(40, window, overlap)
