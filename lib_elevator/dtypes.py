"""Numerics: latents are handled in float32 (whatever the models' dtype), or in float64 when the
caller works in float64 (used to check the algorithm against a reference to 1e-10)."""

import torch


def working_dtype(tensor: torch.Tensor) -> torch.dtype:
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def resolve_device(name: str = "auto") -> torch.device:
    """"auto": the first CUDA device when there is one, else the CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """"auto": float16 on a GPU, float32 on the CPU (float16 convolutions there are slow)."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)
