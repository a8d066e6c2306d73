"""A simulated GPU for estimating peak VRAM without one (used by bench.vram).

torch's FakeTensorMode gives a tensor a shape, dtype and device but no data, so the real job code
(`standalone.generate`, the Refiner's offload moves, the diffusers UNets and VAE) runs op by op at
full size on a CPU in minutes. `SimulatedGpu` counts every storage that lands on the simulated
device, rounded up to 512 bytes as the CUDA caching allocator does, until Python frees it: `current`
is what `torch.cuda.memory_allocated()` would report, `peak` what `max_memory_allocated()` would.

The simulated device is torch's "meta" device. A fake "cuda" device would read better, but a
CPU-only torch cannot index a fake CUDA tensor (`x[:, :n]` asks for a CUDA device guard), and nothing
in the job's code depends on the device's name except `torch.cuda.empty_cache()`, which only frees
cached blocks and changes no allocated figure.

Only work that touches the device is faked. Host-side work runs for real (the schedule tables and
their `.item()` calls, the seeded CPU noise, tokenisation): an op goes to the fake mode when one of
its inputs is fake or it creates a tensor on the device; everything nested inside such an op stays
fake. `build()` makes every op fake for a while: models constructed inside it cost no RAM; moving a
model off the device makes its tensors fake CPU tensors, which cost nothing either.

Two patches of torch, active only inside `active()`, make the simulation work:
- `torch.utils.swap_tensors`: `nn.Module.to` swaps parameter objects of fake tensors, which fails
  while the fake mode's converter memo holds weak references to them; the memo only matters for
  converting real tensors consistently, so it is emptied before each swap;
- `F.scaled_dot_product_attention`: on a fake device torch would take its math fallback, which holds
  the whole (rows x heads x N x N) score matrix; a GPU runs float16/bfloat16 attention as
  FlashAttention (torch picks it on Ampere and later GPUs), so that kernel's op is called instead.

It leans on torch's private fake-tensor API (`torch._subclasses.fake_tensor`, the converter memo), as
of the pinned torch 2.13; tests/test_bench_vram.py fails loudly if a torch upgrade changes it.

What it cannot see (why the figures are estimates): kernel workspaces (cuBLAS, cuDNN convolution
algorithms), the CUDA context (outside `memory_allocated` anyway), the allocator's fragmentation
(reserved minus allocated), and the values of tensors (a read of one gives 0; the only such read
in these models is the fill value of CLIP's causal mask).
"""

from __future__ import annotations

import contextlib
import weakref

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode, unset_fake_temporarily
from torch.utils._pytree import tree_leaves

DEVICE = torch.device("meta")  # stands for the GPU (see the module docstring)
BLOCK = 512  # the CUDA caching allocator's smallest block: every allocation is rounded up to it


def _targets_device(kwargs: dict) -> bool:
    device = kwargs.get("device")
    return device is not None and torch.device(device).type == DEVICE.type


class SimulatedGpu(FakeTensorMode):
    """Use `with SimulatedGpu().active() as sim:`; see the module docstring. `stage` names what runs
    now: the peak is also kept per stage (`stage_peaks`)."""

    def __init__(self):
        super().__init__(allow_non_fake_inputs=True)
        self.current = self.peak = 0
        self.stage = "setup"
        self.stage_peaks: dict[str, int] = {}
        self._live: dict[int, int] = {}  # storage address -> counted bytes
        self._depth = 0
        self._building = False

    # ---------------------------------------------------------------------------- accounting
    def reset_peak(self) -> None:
        self.peak = self.current
        self.stage_peaks = {}

    def _free(self, key: int) -> None:
        self.current -= self._live.pop(key)

    def _count(self, tensor) -> None:
        if not isinstance(tensor, torch.Tensor) or tensor.device.type != DEVICE.type:
            return
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self._live:  # a view of a counted storage
            return
        size = -(-storage.nbytes() // BLOCK) * BLOCK
        self._live[key] = size
        self.current += size
        self.peak = max(self.peak, self.current)
        self.stage_peaks[self.stage] = max(self.stage_peaks.get(self.stage, 0), self.current)
        weakref.finalize(storage, self._free, key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self._depth == 0 and not self._building:
            if func is torch.ops.aten._local_scalar_dense.default and args[0].device.type == DEVICE.type:
                # torch.tensor(x, device=...) makes a real meta tensor, bypassing the fake mode: its
                # value is gone (see the module docstring)
                return 0
            touches_device = _targets_device(kwargs) or any(
                isinstance(a, FakeTensor) for a in tree_leaves((args, kwargs))
            )
            if not touches_device:  # host-side work: run it for real
                with unset_fake_temporarily():
                    return func(*args, **kwargs)
        self._depth += 1
        try:
            out = super().__torch_dispatch__(func, types, args, kwargs)
        finally:
            self._depth -= 1
        if self._depth == 0:
            for tensor in tree_leaves(out):
                self._count(tensor)
        return out

    @contextlib.contextmanager
    def build(self):
        """Every op inside is fake (models built here have no data and cost no RAM)."""
        self._building = True
        try:
            yield
        finally:
            self._building = False

    # ---------------------------------------------------------------------------- patches
    @contextlib.contextmanager
    def active(self):
        """The fake mode plus the patches. (Not `__enter__`: the fake mode re-enters itself inside
        every op it dispatches, and the patches must outlive those inner exits.)"""
        with contextlib.ExitStack() as stack:
            stack.enter_context(_patched(torch.utils, "swap_tensors", self._swap(torch.utils.swap_tensors)))
            stack.enter_context(
                _patched(F, "scaled_dot_product_attention", _flash_sdpa(F.scaled_dot_product_attention))
            )
            stack.enter_context(self)
            yield self

    def _swap(self, original):
        def swap_tensors(a, b):
            self.fake_tensor_converter.meta_converter.tensor_memo.clear()
            return original(a, b)

        return swap_tensors


def _flash_sdpa(original):
    def scaled_dot_product_attention(
        query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw
    ):
        flash = (
            query.device.type == DEVICE.type
            and query.dtype in (torch.float16, torch.bfloat16)
            and attn_mask is None
            and not kw
            and query.shape[-1] <= 256
        )
        if not flash:
            return original(
                query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale, **kw
            )
        return torch.ops.aten._scaled_dot_product_flash_attention(query, key, value, dropout_p, is_causal, scale=scale)[
            0
        ]

    return scaled_dot_product_attention


@contextlib.contextmanager
def _patched(owner, name: str, value):
    saved = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, saved)
