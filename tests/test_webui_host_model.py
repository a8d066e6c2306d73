"""The host's checkpoint seen through the core's interfaces (lib_elevator/webui/host_model.py):
the k-form denoiser over `sd_model.apply_model` used for inversion and PnP, the cond dict the host's
CFG denoiser builds, the latent space and the VAE codec. host_model.py is pure: no stand-in needed."""

import math
from types import SimpleNamespace

import pytest
import torch
from host_stub import samplers
from torch import nn

from lib_elevator.latent_space import SD1_LATENTS, SDXL_LATENTS
from lib_elevator.webui import host_model

TABLE = samplers.sd_alphas_cumprod()


class Checkpoint:
    """apply_model records its inputs and returns a fixed output."""

    def __init__(self, parameterization="eps", output=0.5):
        self.alphas_cumprod = TABLE
        self.parameterization = parameterization
        self.output = output
        self.calls = []

    def apply_model(self, x, t, cond):
        self.calls.append((x, t, cond))
        return torch.full_like(x, self.output)


@pytest.mark.parametrize("t", [1, 250, 999])
def test_the_denoiser_calls_apply_model_in_ddpm_form_at_the_training_timestep(t):
    sd_model = Checkpoint()
    text, image = torch.ones(3, 2, 8), torch.zeros(3, 5, 1, 1)
    denoise = host_model.host_denoiser(sd_model, text, image)
    sigma = samplers.sigma_of(float(TABLE.double()[t]))
    x = torch.randn(3, 4, 2, 2, dtype=torch.float64)
    out = denoise(x, sigma)
    ((x_in, timesteps, cond),) = sd_model.calls
    assert torch.allclose(x_in, x / math.sqrt(1 + sigma**2), rtol=1e-12, atol=0)
    assert timesteps.dtype == torch.float32 and timesteps.tolist() == [float(t)] * 3
    assert cond == {"c_crossattn": [text], "c_concat": [image]}
    assert torch.allclose(out, x - sigma * 0.5, rtol=1e-12, atol=0)  # eps: x0 = x - sigma * eps


def test_v_prediction_checkpoints():
    sd_model = Checkpoint(parameterization="v", output=0.25)
    sigma = samplers.sigma_of(float(TABLE.double()[500]))
    x = torch.randn(2, 4, 2, 2, dtype=torch.float64)
    out = host_model.host_denoiser(sd_model, torch.ones(2, 2, 8), torch.zeros(2, 5, 1, 1))(x, sigma)
    a = 1 / (1 + sigma**2)  # abar at that sigma; x_t = sqrt(abar) x0 + sqrt(1 - abar) eps
    x_t = x * math.sqrt(a)
    assert torch.allclose(out, math.sqrt(a) * x_t - math.sqrt(1 - a) * 0.25, rtol=1e-10, atol=1e-12)
    assert host_model.prediction_type(sd_model) == "v_prediction"
    assert host_model.prediction_type(SimpleNamespace()) == "epsilon"


def test_sdxl_conds_and_repeated_rows():
    vector, crossattn = torch.ones(1, 6), torch.ones(1, 3, 8)
    image = torch.zeros(4, 5, 1, 1)
    cond = host_model.condition_dict({"crossattn": crossattn, "vector": vector}, image)
    assert cond == {"crossattn": crossattn, "vector": vector, "c_concat": [image]}
    repeated = host_model.repeat_rows({"crossattn": crossattn, "vector": vector}, 4)
    assert repeated["crossattn"].shape == (4, 3, 8) and repeated["vector"].shape == (4, 6)
    assert host_model.repeat_rows(torch.ones(1, 77, 8), 3).shape == (3, 77, 8)


def test_latent_spaces():
    assert host_model.latent_space(SimpleNamespace(is_sdxl=False)) == SD1_LATENTS
    sdxl = host_model.latent_space(SimpleNamespace(is_sdxl=True, scale_factor=0.13025))
    assert sdxl == SDXL_LATENTS
    assert host_model.latent_space(SimpleNamespace(is_sdxl=False, scale_factor=0.5)).scaling_factor == 0.5


def test_the_host_vae_as_a_codec():
    class Autoencoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Conv2d(3, 8, 1)
            self.quant_conv = nn.Conv2d(8, 8, 1)

        def decode(self, z):
            return z[:, :3] * 2

    vae = Autoencoder()
    codec = host_model.host_codec(SimpleNamespace(first_stage_model=vae))
    pixels = torch.randn(1, 3, 4, 4)
    with torch.no_grad():
        assert torch.equal(codec.encode(pixels), vae.quant_conv(vae.encoder(pixels))[:, :4])
    z = torch.randn(1, 4, 4, 4)
    assert torch.equal(codec.decode(z), z[:, :3] * 2)
    assert codec.device == torch.device("cpu") and codec.dtype == torch.float32
