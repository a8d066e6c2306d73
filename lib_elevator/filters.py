"""Low-pass filtering of a video latent over (frames, height, width) with a 3-D FFT.

Frequencies are normalised to [-1, 1) per axis in FFT-shifted order: index k of an axis of
length n sits at 2k/n - 1. With spatial cut-off d_s and temporal cut-off d_t the normalised
distance is

    r^2 = (f_t / d_t)^2 + (f_h^2 + f_w^2) / d_s^2

and the masks are gaussian exp(-r^2 / 2), butterworth 1 / (1 + r^(2n)), ideal [r <= 1] and a box
of half-widths round(d_s * h/2), round(d_t * F/2) around the centre (the FreeInit family of
masks that VideoElevator uses; the gaussian and butterworth forms equal theirs term by term).
The ideal mask keeps r <= 1; FreeInit's code compares r^2 * d_s^2 with 2 * d_s, which is a
different radius for every d_s other than 2 and looks unintended.

Masks are built with broadcasting (no Python loops over elements) and cached per
(spec, shape, device, dtype), so a job builds each one once.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from lib_elevator.dtypes import working_dtype

FILTER_METHODS = ("gaussian", "butterworth", "ideal", "box")


@dataclass(frozen=True)
class FilterSpec:
    method: str = "gaussian"
    spatial: float = 1.0  # d_s; math.inf passes every spatial frequency
    temporal: float = 0.4  # d_t
    order: int = 4  # butterworth n

    def __post_init__(self):
        if self.method not in FILTER_METHODS:
            raise ValueError(f"filter method must be one of {', '.join(FILTER_METHODS)}; got {self.method!r}")
        for name, value in (("spatial", self.spatial), ("temporal", self.temporal)):
            if not value > 0:
                raise ValueError(f"filter {name} cut-off must be > 0 (0 would erase the video); got {value}")
        if self.method == "butterworth" and self.order < 1:
            raise ValueError(f"butterworth order must be >= 1; got {self.order}")


def _centred_frequencies(n: int) -> torch.Tensor:
    return torch.arange(n, dtype=torch.float64) * (2.0 / n) - 1.0


def _normalised_radius_sq(spec: FilterSpec, frames: int, height: int, width: int) -> torch.Tensor:
    f_t = _centred_frequencies(frames).view(-1, 1, 1)
    f_h = _centred_frequencies(height).view(1, -1, 1)
    f_w = _centred_frequencies(width).view(1, 1, -1)
    spatial = (
        (f_h**2 + f_w**2) / spec.spatial**2
        if math.isfinite(spec.spatial)
        else torch.zeros(1, height, width, dtype=torch.float64)
    )
    return (f_t / spec.temporal) ** 2 + spatial


def _box_mask(spec: FilterSpec, frames: int, height: int, width: int) -> torch.Tensor:
    def window(n: int, cutoff: float) -> slice:
        half = round(n // 2 * cutoff) if math.isfinite(cutoff) else n
        # clamp the start at 0: a negative slice start would wrap around to the far end
        return slice(max(n // 2 - half, 0), n // 2 + half)

    mask = torch.zeros(frames, height, width, dtype=torch.float64)
    mask[window(frames, spec.temporal), window(height, spec.spatial), window(width, spec.spatial)] = 1.0
    return mask


def lowpass_mask(spec: FilterSpec, frames: int, height: int, width: int) -> torch.Tensor:
    """The mask in FFT-shifted (centred) order, float64, shape (F, h, w)."""
    if spec.method == "box":
        return _box_mask(spec, frames, height, width)
    r2 = _normalised_radius_sq(spec, frames, height, width)
    if spec.method == "gaussian":
        return torch.exp(-0.5 * r2)
    if spec.method == "butterworth":
        return 1.0 / (1.0 + r2**spec.order)
    return (r2 <= 1.0).to(torch.float64)  # ideal


@functools.lru_cache(maxsize=32)
def _fft_order_mask(
    spec: FilterSpec, frames: int, height: int, width: int, device: torch.device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    # Stored un-shifted so applying it needs no fftshift/ifftshift of the data.
    mask = torch.fft.ifftshift(lowpass_mask(spec, frames, height, width), dim=(-3, -2, -1))
    return mask.to(device=device, dtype=dtype)


def temporal_lowpass(latents: torch.Tensor, spec: FilterSpec) -> torch.Tensor:
    """Low-pass filter a video latent (F, C, h, w) over (F, h, w), per channel (in float32, or float64)."""
    if latents.ndim != 4:
        raise ValueError(f"expected video latents of shape (frames, channels, h, w); got {tuple(latents.shape)}")
    frames, _, height, width = latents.shape
    dtype = working_dtype(latents)
    mask = _fft_order_mask(spec, frames, height, width, latents.device, dtype)
    x = latents.to(dtype).transpose(0, 1)  # (C, F, h, w): the FFT runs over the last three axes
    spectrum = torch.fft.fftn(x, dim=(-3, -2, -1)) * mask
    filtered = torch.fft.ifftn(spectrum, dim=(-3, -2, -1)).real
    return filtered.transpose(0, 1).to(latents.dtype).contiguous()
