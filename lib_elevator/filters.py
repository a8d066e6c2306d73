"""Low-pass filtering of a video latent over (frames, height, width) with a 3-D FFT.

Frequencies are normalised to [-1, 1) per axis in FFT-shifted order: 2 * fftfreq(n), shifted, so
the zero frequency (DC) sits at index n // 2 with value 0 for every n. With spatial cut-off d_s and
temporal cut-off d_t the normalised distance is

    r^2 = (f_t / d_t)^2 + (f_h^2 + f_w^2) / d_s^2

and the masks are gaussian exp(-r^2 / 2), butterworth 1 / (1 + r^(2n)), ideal [r <= 1] and a box
of half-widths round(d_s * (h // 2)), round(d_t * (F // 2)) on each side of DC (the FreeInit
family of masks that VideoElevator uses). Every mask keeps DC at 1: the mean of the video always
passes, so no setting can erase it.

The authors' code (convention "authors", switched on by compat="authors") differs in three places:
its grid is 2k/n - 1, which misses DC by 1/n on odd-sized axes (their gaussian damps the mean of a
15-frame video); its ideal mask compares r^2 * d_s^2 with 2 * d_s, a different radius for every
d_s other than 2; its box spans [c - h, c + h), one bin short on the positive side, and is empty
when h rounds to 0 (2-3 frames at d_t = 0.4). An all-zero mask is refused with a message.

Masks are built with broadcasting (no Python loops over elements) and cached per
(spec, shape, device, dtype), so a job builds each one once.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from lib_elevator.dtypes import working_dtype
from lib_elevator.errors import SettingsError

FILTER_METHODS = ("gaussian", "butterworth", "ideal", "box")
MASK_CONVENTIONS = ("exact", "authors")


@dataclass(frozen=True)
class FilterSpec:
    method: str = "gaussian"
    spatial: float = 1.0  # d_s; math.inf passes every spatial frequency
    temporal: float = 0.4  # d_t
    order: int = 4  # butterworth n
    convention: str = "exact"  # "authors": their frequency grid and ideal/box masks (see the module doc)

    def __post_init__(self):
        if self.method not in FILTER_METHODS:
            raise ValueError(f"filter method must be one of {', '.join(FILTER_METHODS)}; got {self.method!r}")
        for name, value in (("spatial", self.spatial), ("temporal", self.temporal)):
            if not value > 0:
                raise ValueError(f"filter {name} cut-off must be > 0 (0 would erase the video); got {value}")
        if self.convention not in MASK_CONVENTIONS:
            raise ValueError(f"mask convention must be one of {', '.join(MASK_CONVENTIONS)}; got {self.convention!r}")
        if self.method == "butterworth" and self.order < 1:
            raise ValueError(f"butterworth order must be >= 1; got {self.order}")


def _centred_frequencies(n: int, convention: str = "exact") -> torch.Tensor:
    if convention == "authors":
        return torch.arange(n, dtype=torch.float64) * (2.0 / n) - 1.0
    return torch.fft.fftshift(torch.fft.fftfreq(n, dtype=torch.float64)) * 2.0


def _normalised_radius_sq(spec: FilterSpec, frames: int, height: int, width: int) -> torch.Tensor:
    f_t = _centred_frequencies(frames, spec.convention).view(-1, 1, 1)
    f_h = _centred_frequencies(height, spec.convention).view(1, -1, 1)
    f_w = _centred_frequencies(width, spec.convention).view(1, 1, -1)
    spatial = (
        (f_h**2 + f_w**2) / spec.spatial**2
        if math.isfinite(spec.spatial)
        else torch.zeros(1, height, width, dtype=torch.float64)
    )
    return (f_t / spec.temporal) ** 2 + spatial


def _box_window(n: int, cutoff: float, convention: str) -> slice:
    """Indices kept along one axis of length n (DC at n // 2)."""
    centre = n // 2
    if not math.isfinite(cutoff):
        return slice(0, n)
    half = round(centre * cutoff)
    if convention == "authors":
        return slice(max(centre - half, 0), centre + half)  # clamped: a negative start would wrap around
    return slice(max(centre - half, 0), min(centre + half + 1, n))


def _box_mask(spec: FilterSpec, frames: int, height: int, width: int) -> torch.Tensor:
    mask = torch.zeros(frames, height, width, dtype=torch.float64)
    windows = [_box_window(n, c, spec.convention) for n, c in ((frames, spec.temporal), (height, spec.spatial),
                                                                  (width, spec.spatial))]
    mask[windows[0], windows[1], windows[2]] = 1.0
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
    if spec.convention == "authors":  # their d^2 <= 2 d_s, with d^2 = r^2 * d_s^2
        return (r2 * spec.spatial**2 <= 2.0 * spec.spatial).to(torch.float64)
    return (r2 <= 1.0).to(torch.float64)  # ideal


@functools.lru_cache(maxsize=32)
def _fft_order_mask(
    spec: FilterSpec, frames: int, height: int, width: int, device: torch.device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    # Stored un-shifted so applying it needs no fftshift/ifftshift of the data.
    mask = lowpass_mask(spec, frames, height, width)
    if not mask.any():
        raise SettingsError(
            "filter_method",
            f"the {spec.method} filter keeps no frequency of a {frames}-frame {height}x{width} latent at "
            f"cut-offs d_s={spec.spatial:g}, d_t={spec.temporal:g}; raise the cut-offs or choose the gaussian filter",
        )
    mask = torch.fft.ifftshift(mask, dim=(-3, -2, -1))
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
