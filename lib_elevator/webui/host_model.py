"""The WebUI's loaded model seen through the core's interfaces: a k-form denoiser for the
inversion and PnP calls, the latent space, and a VAE for latent-space projection.

The UNet is called through `sd_model.apply_model`, never `diffusion_model` directly, so the
--medvram/--lowvram hooks move weights as they do for the host's own calls, and the current LoRA
set (merged into the weights by the host) applies.
"""

from __future__ import annotations

import math

import torch

from lib_elevator.inversion import Denoiser, denoised_from_output
from lib_elevator.latent_space import SD1_LATENTS, SDXL_LATENTS, LatentSpace, VaeCodec, posterior_mean
from lib_elevator.schedule import timestep_of_sigma


def latent_space(sd_model) -> LatentSpace:
    base = SDXL_LATENTS if getattr(sd_model, "is_sdxl", False) else SD1_LATENTS
    return LatentSpace(base.family, base.channels, float(getattr(sd_model, "scale_factor", base.scaling_factor)))


def prediction_type(sd_model) -> str:
    return "v_prediction" if getattr(sd_model, "parameterization", "eps") == "v" else "epsilon"


def condition_dict(text_cond, image_cond) -> dict:
    """The cond argument of apply_model, built as the host's CFG denoiser builds it."""
    if isinstance(text_cond, dict):  # SDXL: {"crossattn", "vector"}
        return {**text_cond, "c_concat": [image_cond]}
    return {"c_crossattn": [text_cond], "c_concat": [image_cond]}


def repeat_rows(cond, rows: int):
    if isinstance(cond, dict):
        return {key: value.expand(rows, *value.shape[1:]) for key, value in cond.items()}
    return cond.expand(rows, *cond.shape[1:])


def host_denoiser(sd_model, text_cond, image_cond) -> Denoiser:
    """D(x, sigma) -> x0 over the rows of `text_cond`, through the host's own UNet call."""
    table = sd_model.alphas_cumprod.detach().double().cpu()
    kind = prediction_type(sd_model)
    cond = condition_dict(text_cond, image_cond)

    def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
        t = timestep_of_sigma(table, sigma)
        timesteps = torch.full((x.shape[0],), t, device=x.device, dtype=torch.float32)
        out = sd_model.apply_model(x / math.sqrt(1.0 + sigma * sigma), timesteps, cond)
        return denoised_from_output(x, sigma, out.to(x.dtype), kind)

    return denoise


def host_codec(sd_model) -> VaeCodec:
    """The host's first-stage model (ldm or sgm autoencoder) as a codec for latent projection."""
    vae = sd_model.first_stage_model
    weight = next(vae.parameters())
    return VaeCodec(vae.decode, lambda pixels: posterior_mean(vae, pixels), weight.device, weight.dtype)
