"""Stand-in of `modules.devices` (CPU, float32; `torch_gc` only counts its calls)."""

import contextlib

import torch

cpu = torch.device("cpu")
device = cpu
dtype = torch.float32
dtype_vae = torch.float32
dtype_unet = torch.float32
gc_calls = 0


def torch_gc():
    global gc_calls
    gc_calls += 1


def autocast(disable=False):
    """The host's autocast context (a no-op here: float32 on the CPU, as the host on the CPU)."""
    return contextlib.nullcontext()
