"""The host's checkpoint seen through the core's interfaces (lib_elevator/webui/a1111/host_model.py):
the k-form denoiser over `sd_model.apply_model` used for inversion and PnP, the cond dict the host's
CFG denoiser builds, the latent space, the VAE codec (also through the host's --medvram/--lowvram wrappers)
and the empty-prompt conditioning. Most of host_model.py is pure; the tests of the two functions that ask
the host (`modules.devices`, `modules.prompt_parser`) run against the stand-in host."""

import math
from types import SimpleNamespace

import pytest
import torch
from host_stub import samplers
from torch import nn

from lib_elevator.latent_space import SD1_LATENTS, SDXL_LATENTS
from lib_elevator.webui.a1111 import host_model
from lib_elevator.webui.host import repeat_rows

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
    repeated = repeat_rows({"crossattn": crossattn, "vector": vector}, 4)
    assert repeated["crossattn"].shape == (4, 3, 8) and repeated["vector"].shape == (4, 6)
    assert repeat_rows(torch.ones(1, 77, 8), 3).shape == (3, 77, 8)


def test_latent_spaces():
    assert host_model.latent_space(SimpleNamespace(is_sdxl=False)) == SD1_LATENTS
    sdxl = host_model.latent_space(SimpleNamespace(is_sdxl=True, scale_factor=0.13025))
    assert sdxl == SDXL_LATENTS
    assert host_model.latent_space(SimpleNamespace(is_sdxl=False, scale_factor=0.5)).scaling_factor == 0.5


class Posterior:
    """ldm's/sgm's DiagonalGaussianDistribution: mean and log-variance halves; sample() draws on the CPU."""

    def __init__(self, moments):
        self.mean, self.logvar = moments.chunk(2, dim=1)

    def sample(self):
        return self.mean + torch.exp(0.5 * self.logvar) * torch.randn(self.mean.shape)


class Autoencoder(nn.Module):
    """ldm's AutoencoderKL (encode returns the posterior) or, with `samples`, sgm's
    AutoencoderKLInferenceWrapper (SDXL's config: encode returns a sample of it)."""

    def __init__(self, samples=False):
        super().__init__()
        self.encoder = nn.Conv2d(3, 8, 1)
        self.quant_conv = nn.Conv2d(8, 8, 1)
        self.samples = samples

    def encode(self, x):
        posterior = Posterior(self.quant_conv(self.encoder(x)))
        return posterior.sample() if self.samples else posterior

    def decode(self, z):
        return z[:, :3] * 2


def lowvram(sd_model, moves: list):
    """What modules/lowvram.py does to the first-stage model: encode/decode replaced on the instance by
    wrappers that first send the module to the compute device."""
    sd_model.lowvram = True
    vae = sd_model.first_stage_model
    encode, decode = vae.encode, vae.decode

    def send_me_to_gpu():
        moves.append("first_stage_model")

    vae.encode = lambda x: (send_me_to_gpu(), encode(x))[1]
    vae.decode = lambda z: (send_me_to_gpu(), decode(z))[1]


@pytest.mark.parametrize("samples", [False, True], ids=["ldm", "sgm"])
def test_the_host_vae_as_a_codec(samples):
    vae = Autoencoder(samples)
    codec = host_model.host_codec(SimpleNamespace(first_stage_model=vae))
    pixels = torch.randn(1, 3, 4, 4)
    with torch.no_grad():
        mean = vae.quant_conv(vae.encoder(pixels))[:, :4]
        state = torch.get_rng_state()
        assert torch.equal(codec.encode(pixels), mean)  # the posterior mean, never a sample
        assert torch.equal(codec.encode(pixels), mean)
        assert torch.equal(torch.get_rng_state(), state)  # sgm's sample() drew nothing the host would miss
    z = torch.randn(1, 4, 4, 4)
    assert torch.equal(codec.decode(z), z[:, :3] * 2)
    assert codec.placement() == (torch.device("cpu"), torch.float32)
    vae.double()  # e.g. the host upcasting its VAE: read at call time, not when the job began
    assert codec.placement() == (torch.device("cpu"), torch.float64)


def test_the_codec_runs_outside_the_samplers_autocast():
    class Recording(Autoencoder):
        def encode(self, x):
            seen.append(torch.is_autocast_enabled("cpu"))
            return super().encode(x)

        def decode(self, z):
            seen.append(torch.is_autocast_enabled("cpu"))
            return super().decode(z)

    seen = []
    codec = host_model.host_codec(SimpleNamespace(first_stage_model=Recording()))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # as the host's sampling runs
        assert codec.encode(torch.randn(1, 3, 4, 4)).dtype == torch.float32
        codec.decode(torch.randn(1, 4, 4, 4))
        assert torch.is_autocast_enabled("cpu")
    assert seen == [False, False]


@pytest.mark.parametrize("samples", [False, True], ids=["ldm", "sgm"])
def test_the_codec_goes_through_the_hosts_lowvram_wrappers(tmp_path, samples):
    from host_stub import installed

    with installed(tmp_path) as host:
        adapter = host.adapter("a1111.host_model")
        sd_model = SimpleNamespace(first_stage_model=Autoencoder(samples))
        moves = []
        lowvram(sd_model, moves)
        codec = adapter.host_codec(sd_model)
        vae = sd_model.first_stage_model
        pixels = torch.randn(2, 3, 4, 4)
        with torch.no_grad():
            assert torch.equal(codec.encode(pixels), vae.quant_conv(vae.encoder(pixels))[:, :4])
            codec.decode(torch.randn(2, 4, 4, 4))
        assert moves == ["first_stage_model", "first_stage_model"]  # both calls moved the VAE first
        # under --medvram/--lowvram the VAE waits on the CPU: inputs go to the host's compute device
        host.devices.device = torch.device("meta")
        assert codec.placement() == (torch.device("meta"), torch.float32)


def test_projection_reads_the_codec_placement_at_every_call():
    from lib_elevator.latent_space import LatentProjector, VaeCodec

    where = {"dtype": torch.float32}
    seen = []

    def decode(z):
        seen.append(z.dtype)
        return z[:, :3]

    codec = VaeCodec(decode, lambda px: torch.cat([px, px[:, :1]], dim=1), torch.device("cpu"), lambda: where["dtype"])
    projector = LatentProjector(codec, SD1_LATENTS, codec, SD1_LATENTS, batch=1)
    latents = torch.randn(2, 4, 2, 2)
    projector(latents)
    where["dtype"] = torch.float64
    out = projector(latents)
    assert seen == [torch.float32, torch.float32, torch.float64, torch.float64]
    assert out.dtype == latents.dtype


def test_empty_condition_is_the_hosts_empty_negative_prompt_for_this_job(tmp_path):
    from host_stub import installed

    with installed(tmp_path) as host:
        adapter = host.adapter("hosts").current()
        from modules import prompt_parser

        seen = []

        class SDXL:
            def get_learned_conditioning(self, batch):
                seen.append(batch)
                return {"crossattn": torch.zeros(len(batch), 77, 8), "vector": torch.ones(len(batch), 6)}

        host.shared.sd_model = SDXL()
        cond = adapter.empty_condition(SimpleNamespace(width=96, height=64), 4)
        (batch,) = seen
        assert isinstance(batch, prompt_parser.SdConditioning) and list(batch) == [""]
        assert batch.is_negative_prompt and (batch.width, batch.height) == (96, 64)
        assert cond["crossattn"].shape == (4, 77, 8) and cond["vector"].shape == (4, 6)

        class SD1:
            def get_learned_conditioning(self, batch):
                return torch.ones(len(batch), 77, 8)

        host.shared.sd_model = SD1()
        assert adapter.empty_condition(SimpleNamespace(width=64, height=64), 3).shape == (3, 77, 8)
