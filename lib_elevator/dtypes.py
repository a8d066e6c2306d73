"""Numerics: latents are handled in float32 (whatever the models' dtype), or in float64 when the
caller works in float64 (used to check the algorithm against a reference to 1e-10)."""

import torch


def working_dtype(tensor: torch.Tensor) -> torch.dtype:
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32
