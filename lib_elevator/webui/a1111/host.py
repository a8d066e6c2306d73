"""AUTOMATIC1111 v1.10.x as a `Host`: the ldm/sgm UNet at `shared.sd_model.model.diffusion_model`."""

from __future__ import annotations

import contextlib

from modules import devices, shared

from lib_elevator.errors import SettingsError
from lib_elevator.webui.a1111 import attention, host_model
from lib_elevator.webui.host import CrossFrame, Host, HostInfo


class PatchedModules(CrossFrame):
    """The modules whose `forward` we wrapped for this job (removed in `remove`): every self-attention
    module, and the UNet itself when the frames run in chunks."""

    def __init__(self, modules: list, chunks=None):
        self.modules, self.chunks = modules, chunks

    def grouped_patch(self, group: int):
        return attention.grouped(self.modules, group)

    def remove(self) -> None:
        attention.remove(self.modules)
        self.modules = []


class A1111Host(Host):
    def __init__(self, info: HostInfo):
        self.info = info

    @staticmethod
    def unet():
        return getattr(getattr(shared.sd_model, "model", None), "diffusion_model", None)

    def check_model(self, p) -> None:
        sd_model = shared.sd_model
        if getattr(sd_model, "is_sd3", False):
            raise SettingsError("checkpoint", "SD3 checkpoints are not supported; load an SD1.x, SD2.x or SDXL "
                                              "checkpoint")
        if getattr(getattr(sd_model, "model", None), "conditioning_key", "crossattn") not in ("crossattn", "hybrid"):
            raise SettingsError("checkpoint", "this checkpoint's conditioning is not supported (unCLIP/edit models)")
        if getattr(shared.opts, "hypertile_enable_unet", False) or shared.opts.data.get("hypertile_enable_unet"):
            raise SettingsError("hypertile", "Hypertile U-Net retiles the batch and breaks cross-frame attention; "
                                             "turn it off in Settings > Hypertile")
        from modules import sd_unet

        if getattr(sd_unet, "current_unet", None) is not None:
            raise SettingsError("sd_unet", "an alternative UNet (e.g. TensorRT) is active; it bypasses attention "
                                           "patches")

    def clean_leftovers(self) -> None:
        unet = self.unet()
        if unet is not None:
            attention.remove_everywhere(unet)

    def patch_unet(self, p, frames: int, anchor: str, on_cond_output, chunks=None) -> CrossFrame:
        # on_cond_output is not needed: the job's on_cfg_denoised callback sees the cond rows here.
        return PatchedModules(attention.install(self.unet(), frames, anchor, chunks), chunks)

    def alphas_cumprod(self, p):
        return shared.sd_model.alphas_cumprod

    def denoiser(self, p, text_cond, image_cond):
        return host_model.host_denoiser(shared.sd_model, text_cond, image_cond)

    def codec(self, p):
        return host_model.host_codec(shared.sd_model)

    def latent_space(self, p):
        return host_model.latent_space(shared.sd_model)

    def offload_by_default(self) -> bool:
        opts = shared.cmd_opts
        return bool(getattr(opts, "medvram", False) or getattr(opts, "lowvram", False)
                    or (getattr(opts, "medvram_sdxl", False) and getattr(shared.sd_model, "is_sdxl", False)))

    @contextlib.contextmanager
    def make_room(self, p, latent_shape):
        """With --medvram/--lowvram the host's module on the GPU is evicted and its hooks bring modules
        back on the next UNet call; otherwise the UNet (DiffusionWrapper) and text encoder move to the
        CPU and are put back before sampling resumes, whatever happens."""
        sd_model = shared.sd_model
        if getattr(sd_model, "lowvram", False):
            from modules import lowvram

            lowvram.send_everything_to_cpu()
            devices.torch_gc()
            yield
            return
        moved = [m for m in (getattr(sd_model, "model", None), getattr(sd_model, "cond_stage_model", None))
                 if m is not None]
        for module in moved:
            module.to(devices.cpu)
        devices.torch_gc()
        try:
            yield
        finally:
            for module in moved:
                module.to(devices.device)
