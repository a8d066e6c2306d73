"""Cross-frame attention, DDIM inversion and the PnP correction."""

import math

import pytest
import torch

from lib_elevator.cross_frame import CrossFrameAttnProcessor, anchor_context, cross_frame_attention
from lib_elevator.inversion import (
    ddim_invert,
    euler_step,
    inversion_path,
    inversion_step,
    pnp_correction,
)
from lib_elevator.schedule import alphas_cumprod, ddim_schedule, sigma_of_alpha

# ------------------------------------------------------------------------------------ attention


def make_attention(dim=16, heads=2):
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    return Attention(query_dim=dim, heads=heads, dim_head=dim // heads).eval()


def manual_attention(attn, queries_from, keys_from):
    """softmax(q k^T / sqrt(d)) v per head, then the output projection; one row at a time."""
    heads = attn.heads
    q, k, v = attn.to_q(queries_from), attn.to_k(keys_from), attn.to_v(keys_from)
    d = q.shape[-1] // heads

    def split(t):
        return t.view(t.shape[0], heads, d).transpose(0, 1)  # (heads, tokens, d)

    weights = torch.softmax(split(q) @ split(k).transpose(1, 2) / math.sqrt(d), dim=-1)
    out = (weights @ split(v)).transpose(0, 1).reshape(q.shape[0], heads * d)
    return attn.to_out[0](out)


def test_cross_frame_attention_equals_attention_with_the_anchor_keys_and_values():
    attn = make_attention()
    x = torch.randn(6, 10, 16)  # two groups of 3 frames, 10 tokens each
    with torch.no_grad():
        out = CrossFrameAttnProcessor(frames=3)(attn, x)
        for row in range(6):
            anchor = x[3 * (row // 3)]
            assert torch.allclose(out[row], manual_attention(attn, x[row], anchor), atol=1e-5)


def test_first_prev_anchor_attends_first_and_previous_frame():
    attn = make_attention()
    x = torch.randn(4, 5, 16)
    with torch.no_grad():
        out = CrossFrameAttnProcessor(frames=4, anchor="first_prev")(attn, x)
        for row in range(4):
            context = torch.cat([x[0], x[max(row - 1, 0)]])
            assert torch.allclose(out[row], manual_attention(attn, x[row], context), atol=1e-5)


def test_one_frame_is_ordinary_self_attention():
    from diffusers.models.attention_processor import AttnProcessor2_0

    attn = make_attention()
    x = torch.randn(3, 7, 16)
    with torch.no_grad():
        assert torch.allclose(CrossFrameAttnProcessor(frames=1)(attn, x), AttnProcessor2_0()(attn, x), atol=1e-6)


def test_groups_do_not_leak_into_each_other():
    attn = make_attention()
    x = torch.randn(6, 4, 16)
    y = x.clone()
    y[0] += 1.0  # change the anchor of the first group only
    with torch.no_grad():
        a, b = CrossFrameAttnProcessor(3)(attn, x), CrossFrameAttnProcessor(3)(attn, y)
    assert not torch.allclose(a[1], b[1])
    assert torch.equal(a[3:], b[3:])


def test_batch_that_is_not_whole_groups_is_refused():
    with pytest.raises(ValueError, match="not a whole number of groups of 4 frames"):
        anchor_context(torch.randn(6, 3, 8), frames=4)


def tiny_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=16,
    ).eval()


def test_patching_a_unet_is_undone_even_after_an_error():
    unet = tiny_unet()
    before = dict(unet.attn_processors)
    with pytest.raises(RuntimeError, match="boom"), cross_frame_attention(unet, frames=2):
        patched = unet.attn_processors
        assert all(isinstance(p, CrossFrameAttnProcessor) for n, p in patched.items() if n.endswith("attn1.processor"))
        assert not any(
            isinstance(p, CrossFrameAttnProcessor) for n, p in patched.items() if n.endswith("attn2.processor")
        )
        raise RuntimeError("boom")
    assert all(unet.attn_processors[n] is p for n, p in before.items())


def test_cross_frame_unet_makes_frames_share_the_anchor_appearance():
    unet = tiny_unet()
    x, context = torch.randn(4, 4, 8, 8), torch.randn(4, 6, 32)
    t = torch.tensor(500.0)
    with torch.no_grad():
        plain = unet(x, t, encoder_hidden_states=context).sample
        with cross_frame_attention(unet, frames=4):
            crossed = unet(x, t, encoder_hidden_states=context).sample
        again = unet(x, t, encoder_hidden_states=context).sample
    assert torch.allclose(plain[0], crossed[0], atol=1e-5)  # the anchor attends to itself either way
    assert not torch.allclose(plain[1:], crossed[1:], atol=1e-4)
    assert torch.equal(plain, again)  # restored


# ------------------------------------------------------------------------------------ inversion

MU, STD = 0.3, 0.8


def gaussian_denoiser(x, sigma):
    """Exact E[x0 | x_sigma] for data x0 ~ N(MU, STD^2) per element."""
    return MU + STD**2 / (STD**2 + sigma**2) * (x - MU)


def exact_flow(x0, sigma):
    """Probability-flow ODE solution from x0 at sigma 0: (x - MU) / sqrt(STD^2 + sigma^2) is constant."""
    return MU + (x0 - MU) * math.sqrt(STD**2 + sigma**2) / STD


def test_inversion_follows_the_exact_flow_and_sampling_back_recovers_the_clean_latent():
    torch.manual_seed(0)
    x0 = MU + STD * torch.randn(2, 4, 8, 8)
    table = alphas_cumprod()
    schedule = ddim_schedule(table, 500, set_alpha_to_one=True)  # fine grid ending at sigma 0
    target = 100  # invert up to sigma_100
    path = inversion_path(schedule.sigmas, target, clean_sigma=0.0)
    trajectory = ddim_invert(x0, path, gaussian_denoiser)
    top = trajectory[schedule.sigmas[target]]
    assert torch.allclose(top, exact_flow(x0, schedule.sigmas[target]), rtol=0.02, atol=0.02)
    x = top
    for i in range(target, schedule.steps):
        x = euler_step(x, gaussian_denoiser(x, schedule.sigmas[i]), schedule.sigmas[i], schedule.sigmas[i + 1])
    assert torch.allclose(x, x0, atol=0.02)


def test_full_inversion_equals_diffusers_ddim_inverse_scheduler():
    from diffusers import DDIMInverseScheduler

    table = alphas_cumprod()
    inverse = DDIMInverseScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        set_alpha_to_one=False,
        steps_offset=1,
        clip_sample=False,
    )
    inverse.set_timesteps(50)
    torch.manual_seed(1)
    x0 = MU + STD * torch.randn(3, 4, 6, 6)

    def eps_ddpm(z, t):  # the Gaussian denoiser seen as a DDPM eps model
        sigma = sigma_of_alpha(table[t]).item()
        x = z * math.sqrt(1 + sigma**2)
        return (x - gaussian_denoiser(x, sigma)) / sigma

    reference, z = [], x0.double()
    for t in inverse.timesteps[:44].tolist():  # the authors' first refine: 44 steps, t = 1 ... 861
        z = inverse.step(eps_ddpm(z, t), t, z).prev_sample
        reference.append(z)

    schedule = ddim_schedule(table, 50, set_alpha_to_one=False)  # diffusers' DDIM with SD's config
    path = inversion_path(schedule.sigmas, 6, schedule.clean_sigma)
    assert len(path) == 45 and path[-1] == schedule.sigmas[6]
    ours = ddim_invert(x0.double(), path, gaussian_denoiser)
    for sigma, ref in zip(path[1:], reference):
        assert torch.allclose(ours[sigma] / math.sqrt(1 + sigma**2), ref, atol=1e-6)


def test_fewer_inversion_steps_keep_the_endpoints():
    sigmas = ddim_schedule(alphas_cumprod(), 50, set_alpha_to_one=True).sigmas
    full = inversion_path(sigmas, 6, 0.0)
    assert len(full) == 45
    for steps in (1, 4, 10):
        path = inversion_path(sigmas, 6, 0.0, steps)
        assert len(path) == steps + 1 and path[0] == 0.0 and path[-1] == sigmas[6]
        assert path == sorted(path) and set(path) <= set(full)
    one_step = ddim_invert(torch.ones(1), inversion_path(sigmas, 6, 0.0, 1), gaussian_denoiser)
    assert list(one_step) == [sigmas[6]]


def test_inversion_step_refuses_to_lower_the_noise():
    with pytest.raises(ValueError, match="raise the noise level"):
        inversion_step(torch.zeros(1), 2.0, 1.0, gaussian_denoiser)


def test_pnp_correction_moves_the_state_by_the_replay_gap():
    torch.manual_seed(2)
    x_next, inv_now, inv_next = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4)
    denoised = gaussian_denoiser(inv_now, 2.0)
    corrected = pnp_correction(x_next, inv_now, inv_next, denoised, 2.0, 1.5)
    replay = euler_step(inv_now, denoised, 2.0, 1.5)
    assert torch.allclose(corrected - x_next, inv_next - replay)
    # when the inversion trajectory is exactly what sampling would retrace, nothing changes
    assert torch.allclose(pnp_correction(x_next, inv_now, replay, denoised, 2.0, 1.5), x_next)
