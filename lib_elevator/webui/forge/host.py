"""Forge (lllyasviel/stable-diffusion-webui-forge, the 2024+ `backend`) as a `Host`.

The only module of the extension that imports Forge's own modules. Tested with Forge main @ dfdcbab6
(2025-06-26); its descendants ersatzForge and Neo keep these names.

- The UNet is `p.sd_model.forge_objects.unet`, a `UnetPatcher` the host replaces with a fresh shallow
  copy before every sampling pass. We clone it, add our attn1 patch and a post-CFG function, and assign
  the clone back: the next reset discards it, so nothing is ever restored, even after a crash. The
  hires pass calls `process_before_every_sampling` twice; the clone of the second call is the one used.
- x0 for the inversion and PnP calls goes through `calc_cond_uncond_batch`, Forge's own batched call:
  the same `transformer_options` (our patch with `cond_or_uncond` [0]), LoRA and model wrappers as the
  host's calls. `KModel` maps sigma to the nearest integer timestep, so a sigma between two of them
  is evaluated at the nearest one.
- The schedule is the predictor's (`forge_objects.unet.model.predictor`); `shared.sd_model` has no
  `alphas_cumprod` until a DDIM/PLMS sampler has been built.
- GPU memory belongs to Forge's memory manager (`--medvram`/`--lowvram` do nothing here): the T2V model
  visits the GPU only for its steps, after Forge has unloaded its models, and `sampling_prepare` loads
  the job's UNet again before the sampler resumes.
- `devices.autocast()` is a no-op in Forge: the T2V model runs in its own dtype (it casts its inputs).
"""

from __future__ import annotations

import contextlib

import torch
from backend import memory_management
from backend.sampling.condition import Condition, compile_conditions
from backend.sampling.sampling_function import calc_cond_uncond_batch, sampling_prepare

from lib_elevator.errors import SettingsError
from lib_elevator.latent_space import SD1_LATENTS, SDXL_LATENTS, LatentSpace, VaeCodec, posterior_mean
from lib_elevator.webui.forge import attention
from lib_elevator.webui.host import CrossFrame, Host, HostInfo


class ClonePatch(CrossFrame):
    """Our attn1 patch on the sampling clone (the host discards the clone: nothing to remove)."""

    def __init__(self, patch, chunks=None):
        self.patch, self.chunks = patch, chunks

    def grouped_patch(self, group: int):
        return attention.grouped(self.patch, group)


class ForgeHost(Host):
    def __init__(self, info: HostInfo):
        self.info = info

    @staticmethod
    def unet_patcher(p):
        return p.sd_model.forge_objects.unet

    def check_model(self, p) -> None:
        sd_model = p.sd_model
        if not any(getattr(sd_model, name, False) for name in ("is_sd1", "is_sd2", "is_sdxl")):
            raise SettingsError("checkpoint", f"{type(sd_model).__name__} checkpoints are not supported; load an "
                                              "SD1.x, SD2.x or SDXL checkpoint")
        if not hasattr(self.unet_patcher(p).model.predictor, "alphas_cumprod"):
            raise SettingsError("checkpoint", "this checkpoint has no discrete noise schedule (alphas_cumprod)")

    def patch_unet(self, p, frames: int, anchor: str, on_cond_output, chunks=None) -> CrossFrame:
        unet = self.unet_patcher(p).clone()
        patch = attention.make_attn1_patch(frames, anchor, chunks)
        unet.set_model_attn1_patch(patch)
        unet.set_model_sampler_post_cfg_function(attention.make_post_cfg_function(on_cond_output))
        if chunks is not None and chunks.active:  # (replaces another extension's UNet function wrapper)
            unet.set_model_unet_function_wrapper(attention.make_chunked_wrapper(chunks))
        p.sd_model.forge_objects.unet = unet
        return ClonePatch(patch, chunks)

    def alphas_cumprod(self, p) -> torch.Tensor:
        return self.unet_patcher(p).model.predictor.alphas_cumprod

    def denoiser(self, p, text_cond, image_cond):
        def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
            unet = self.unet_patcher(p)  # read at call time: the clone of the current pass
            cond = compile_conditions(text_cond)
            if isinstance(image_cond, torch.Tensor) and image_cond.shape[0] == x.shape[0] \
                    and image_cond.shape[2:] == x.shape[2:]:  # inpainting models, as Forge's sampling_function
                cond[0]["model_conds"]["c_concat"] = Condition(image_cond)
            sigmas = torch.full((x.shape[0],), float(sigma), device=x.device, dtype=torch.float32)
            x0, _ = calc_cond_uncond_batch(unet.model, cond, None, x.float(), sigmas, unet.model_options)
            return x0.to(x.dtype)

        return denoise

    def latent_space(self, p) -> LatentSpace:
        base = SDXL_LATENTS if getattr(p.sd_model, "is_sdxl", False) else SD1_LATENTS
        vae = p.sd_model.forge_objects.vae.first_stage_model
        return LatentSpace(base.family, base.channels, float(getattr(vae, "scaling_factor", base.scaling_factor)))

    def codec(self, p) -> VaeCodec:
        """Forge's VAE, loaded by its memory manager before each call and read at call time."""

        def vae():
            patcher = p.sd_model.forge_objects.vae
            memory_management.load_models_gpu([patcher.patcher])
            return patcher

        def decode(z):
            v = vae()
            return v.first_stage_model.decode(z.to(v.device, v.vae_dtype))

        def encode(pixels):
            v = vae()
            return posterior_mean(v.first_stage_model, pixels.to(v.device, v.vae_dtype))

        return VaeCodec(decode, encode, lambda: p.sd_model.forge_objects.vae.device,
                        lambda: p.sd_model.forge_objects.vae.vae_dtype)

    def offload_by_default(self) -> bool:
        # Forge's memory manager does not know our model: it visits the GPU only when Forge has made room.
        return True

    @contextlib.contextmanager
    def make_room(self, p, latent_shape):
        memory_management.unload_all_models()
        memory_management.soft_empty_cache()
        try:
            yield
        finally:
            sampling_prepare(self.unet_patcher(p), torch.empty(latent_shape, device="meta"))
