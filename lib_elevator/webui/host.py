"""The seam between the job and the WebUI it runs in: one `Host` per process, chosen once.

Everything the job needs from the host's *model* goes through a `Host`; everything else (the Script
hooks, `p`, `shared.state`, the sampler function, infotext, outputs, the API) is common to
AUTOMATIC1111 and Forge and stays in the job. The two implementations live in their own packages:

    a1111/  AUTOMATIC1111 v1.10.x: the UNet is `shared.sd_model.model.diffusion_model` (ldm/sgm); its
            self-attention modules get an instance `forward` for the job and lose it afterwards;
            rows are [cond frames | uncond frames]; x0 comes from `sd_model.apply_model`.
    forge/  Forge (the 2024+ backend, `backend.*`): the UNet is a `UnetPatcher` that the host clones
            for every sampling pass; the attn1 patch goes on our clone and dies with it; rows are
            chunks of frames in `cond_or_uncond` order (uncond first); x0 comes from Forge's own
            batched call, so its patches apply.

Only `forge/host.py` imports Forge's modules. `hosts.py` tells which host this is and builds its `Host`
once (`hosts.current()`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

A1111, FORGE, FORGE_CLASSIC = "AUTOMATIC1111", "Forge", "Forge (old backend)"


@dataclass
class HostInfo:
    family: str  # A1111, FORGE or FORGE_CLASSIC
    version: str  # the host's git tag, as its footer shows it ("" when unknown)
    repository: str = ""  # owner/name of its git remote, which tells the Forge variants apart

    def __str__(self) -> str:
        where = f" ({self.repository})" if self.repository else ""
        return f"{self.family} {self.version}".strip() + where


class Host:
    """What the job asks of the host's model. Row layouts, patch scoping, memory and the noise schedule
    differ between hosts; the meaning of every call does not."""

    info: HostInfo

    def unsupported(self) -> str | None:
        """Why VideoElevator cannot run in this host, or None."""
        return None

    def check_model(self, p) -> None:
        """Raise SettingsError when the loaded checkpoint or a host setting rules the job out."""

    def clean_leftovers(self) -> None:
        """Undo what a crashed job may have left on the host's model (before every job)."""

    def patch_unet(self, p, frames: int, anchor: str, on_cond_output, chunks=None) -> CrossFrame:
        """Cross-frame attention for this sampling pass (called again for the hires pass).
        `on_cond_output(x_k, cond_x0)` is called with each host UNet call's input (k-form) and cond
        prediction where the host has no `on_cfg_denoised` (Forge); hosts that fire it ignore it.
        `chunks`: an active `cross_frame.FrameChunks` runs every UNet call a few frames at a time."""
        raise NotImplementedError

    def alphas_cumprod(self, p) -> torch.Tensor:
        """The checkpoint's training schedule (1000 entries)."""
        raise NotImplementedError

    def denoiser(self, p, text_cond, image_cond):
        """D(x_k, sigma) -> x0 over the rows of `text_cond` (frames), through the host's own UNet call
        with the current patches (cross-frame attention, LoRA)."""
        raise NotImplementedError

    def codec(self, p):
        """The host's VAE as a `VaeCodec` (latent projection between latent spaces)."""
        raise NotImplementedError

    def latent_space(self, p):
        raise NotImplementedError

    def make_room(self, p, latent_shape):
        """A context manager: the GPU is the T2V model's inside it, the host's UNet is ready to sample
        again after it, whatever happens inside."""
        return contextlib.nullcontext()

    def offload_by_default(self) -> bool:
        """Whether the T2V model leaves the GPU between refine steps when the setting says "auto"."""
        return False

    def empty_condition(self, p, rows: int):
        """The conditioning of an empty prompt built as the host builds a job's empty negative prompt
        (`SdConditioning([""], is_negative_prompt=True, width, height)` through
        `get_learned_conditioning`), repeated to `rows`. Both hosts build it the same way: for SDXL,
        the size embeddings of this job's width/height and zeros for the text embedders' outputs (an
        empty negative prompt), the same conditioning as the host's own uncond rows."""
        from modules import devices, prompt_parser, shared

        texts = prompt_parser.SdConditioning([""], is_negative_prompt=True, width=p.width, height=p.height)
        with torch.no_grad(), devices.autocast():
            cond = shared.sd_model.get_learned_conditioning(texts)
        return repeat_rows(cond, rows)


class CrossFrame:
    """Cross-frame attention as installed for one sampling pass (`chunks`: its frame chunks, or None)."""

    chunks = None

    @contextlib.contextmanager
    def grouped(self, group: int):
        """Anchor groups of `group` rows for a while (the authors' inversion: two groups of F/2)."""
        with self.grouped_patch(group), \
                (self.chunks.grouped(group) if self.chunks is not None else contextlib.nullcontext()):
            yield

    def grouped_patch(self, group: int):
        """The host's part of `grouped`: its attention patch with groups of `group` rows."""
        return contextlib.nullcontext()

    def remove(self) -> None:
        """Take the patch out again (nothing to do where the host discards it)."""


def repeat_rows(cond, rows: int):
    if isinstance(cond, dict):  # SDXL: {"crossattn", "vector"}
        return {key: value.expand(rows, *value.shape[1:]) for key, value in cond.items()}
    return cond.expand(rows, *cond.shape[1:])
