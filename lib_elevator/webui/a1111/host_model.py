"""AUTOMATIC1111's loaded model seen through the core's interfaces: a k-form denoiser for the
inversion and PnP calls, the latent space, and a VAE for latent-space projection.

The UNet is called through `sd_model.apply_model`, never `diffusion_model` directly, so the
--medvram/--lowvram hooks move weights as they do for the host's own calls, and the current LoRA
set (merged into the weights by the host) applies.
"""

from __future__ import annotations

import contextlib
import math

import torch

from lib_elevator.inversion import Denoiser, denoised_from_output
from lib_elevator.latent_space import SD1_LATENTS, SDXL_LATENTS, LatentSpace, VaeCodec
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


def _vae_device(sd_model, vae) -> torch.device:
    """Where the VAE computes its next call. With --medvram/--lowvram the host keeps it on the CPU and
    its wrapped encode/decode (modules/lowvram.py) move it to the compute device first; else it stays where
    its weights are now (read at call time: nothing is assumed about where it was when the job began)."""
    if getattr(sd_model, "lowvram", False):
        from modules import devices

        return devices.device
    return next(vae.parameters()).device


def host_posterior_mean(vae, pixels: torch.Tensor) -> torch.Tensor:
    """Deterministic encode through the host's own `first_stage_model.encode` (whatever wraps it, e.g.
    the --medvram/--lowvram wrapper that moves the VAE to the compute device, runs).

    ldm's AutoencoderKL (SD1/SD2) returns the posterior: its mean is taken. sgm's
    AutoencoderKLInferenceWrapper (SDXL's config) returns a *sample* of it, and this sgm version has no
    `unregularized` switch, so the moments are taken as the call passes them through `quant_conv`
    (mean = first half, as in the posterior), and the CPU random state its sample drew from is restored,
    so the host's later draws (e.g. ancestral samplers' noise) are as without the projection."""
    captured = []
    quant_conv = getattr(vae, "quant_conv", None)
    hook = None
    if isinstance(quant_conv, torch.nn.Module):
        hook = quant_conv.register_forward_hook(lambda module, args, out: captured.append(out))
    try:
        with torch.random.fork_rng(devices=[]):  # ldm's and sgm's sample() draw on the CPU generator
            out = vae.encode(pixels)
    finally:
        if hook is not None:
            hook.remove()
    if not isinstance(out, torch.Tensor) and isinstance(getattr(out, "mean", None), torch.Tensor):
        return out.mean  # a DiagonalGaussianDistribution
    if captured:
        return captured[-1].chunk(2, dim=1)[0]
    raise RuntimeError(f"cannot take the posterior mean of the host's VAE ({type(vae).__name__}): its encode "
                       "returned a sample and has no quant_conv")


def _without_autocast(call, device: torch.device):
    try:
        context = torch.autocast(device.type, enabled=False)
    except RuntimeError:  # a device type autocast does not know
        context = contextlib.nullcontext()
    with context:
        return call()


def host_codec(sd_model) -> VaeCodec:
    """The host's first-stage model (ldm or sgm autoencoder) as a codec for latent projection. Both calls
    go through the module's own `encode`/`decode` attributes, looked up at call time, so the host's
    --medvram/--lowvram wrappers and hooks move the VAE as for the host's own calls; device and dtype are
    read at call time too. The projection runs inside the sampler, where the host's autocast is on; the
    host decodes its own latents outside it (in the VAE's dtype, and sgm turns it off for SDXL's VAE,
    which overflows in float16), so autocast is off for these calls too."""

    def vae():
        return sd_model.first_stage_model

    return VaeCodec(
        lambda z: _without_autocast(lambda: vae().decode(z), z.device),
        lambda pixels: _without_autocast(lambda: host_posterior_mean(vae(), pixels), pixels.device),
        lambda: _vae_device(sd_model, vae()),
        lambda: next(vae().parameters()).dtype,
    )
