"""The pure pieces: noise mixing, the low-pass filter, schedules and refine points."""

import math

import pytest
import torch

from lib_elevator.filters import FilterSpec, _fft_order_mask, lowpass_mask, temporal_lowpass
from lib_elevator.noise import TorchNoise, WebUIJobNoise, mix_noise, mixed_noise
from lib_elevator.schedule import (
    RefinePoint,
    alphas_cumprod,
    ddim_schedule,
    ddim_timesteps,
    nearest_timestep,
    parse_refine_points,
    refine_indices,
    sigma_of_alpha,
    timestep_of_sigma,
    webui_ddim_timesteps,
)

# ------------------------------------------------------------------------------------ noise


def test_mixed_noise_has_unit_variance_and_the_expected_frame_correlation():
    alpha = 1.5
    noise = mixed_noise(TorchNoise(0), frames=8, latent_shape=(4, 64, 64), alpha=alpha)  # 8 x 16384 samples
    assert noise.shape == (8, 4, 64, 64)
    per_frame_var = noise.var(dim=(1, 2, 3))
    assert torch.allclose(per_frame_var, torch.ones(8), atol=0.03)
    flat = noise.flatten(1)
    corr = torch.corrcoef(flat)
    off_diagonal = corr[~torch.eye(8, dtype=torch.bool)]
    expected = alpha**2 / (1 + alpha**2)
    assert abs(off_diagonal.mean().item() - expected) < 0.01
    assert off_diagonal.std().item() < 0.02


def test_mixed_noise_alpha_zero_is_independent_frames():
    noise = mixed_noise(TorchNoise(1), 4, (4, 64, 64), alpha=0.0)
    corr = torch.corrcoef(noise.flatten(1))
    assert corr[~torch.eye(4, dtype=torch.bool)].abs().max() < 0.03


def test_noise_is_reproducible_per_seed_and_drawn_base_first():
    a = mixed_noise(TorchNoise(42), 3, (4, 8, 8), 1.0)
    b = mixed_noise(TorchNoise(42), 3, (4, 8, 8), 1.0)
    c = mixed_noise(TorchNoise(43), 3, (4, 8, 8), 1.0)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    g = torch.Generator().manual_seed(42)
    base, residual = torch.randn((1, 4, 8, 8), generator=g), torch.randn((3, 4, 8, 8), generator=g)
    assert torch.allclose(a, (base + residual) / math.sqrt(2.0))
    with pytest.raises(ValueError, match="alpha"):
        mix_noise(base, residual, -1.0)


def test_webui_job_noise_replays_the_hosts_draws():
    """Base from the job's generator, residuals from the host's per-image seeds, then the job's again."""
    noise = WebUIJobNoise(7)
    base, residual, later = noise.randn((1, 4, 2, 2)), noise.randn((3, 4, 2, 2)), noise.randn((3, 4, 2, 2))
    job = torch.Generator().manual_seed(7)
    assert torch.equal(base, torch.randn((1, 4, 2, 2), generator=job))
    assert torch.equal(later, torch.randn((3, 4, 2, 2), generator=job))
    for k in range(3):
        assert torch.equal(residual[k], torch.randn((4, 2, 2), generator=torch.Generator().manual_seed(7 + k)))


# ------------------------------------------------------------------------------------ filter


def reference_mask(spec: FilterSpec, t_len: int, h_len: int, w_len: int) -> torch.Tensor:
    """Per-element construction straight from the published formulas (slow, for comparison):
    the authors' grid 2k/n - 1 and their ideal radius d^2 <= 2 d_s for convention "authors", the
    exact grid (DC at 0 on odd axes too) and r <= 1 otherwise."""
    d_s, d_t = spec.spatial, spec.temporal

    def freq(k, n):
        if spec.convention == "authors":
            return 2 * k / n - 1
        return 2 * (k - n // 2) / n  # fftshift(fftfreq(n)) * 2

    mask = torch.zeros(t_len, h_len, w_len, dtype=torch.float64)
    for t in range(t_len):
        for h in range(h_len):
            for w in range(w_len):
                d2 = ((d_s / d_t) * freq(t, t_len)) ** 2 + freq(h, h_len) ** 2 + freq(w, w_len) ** 2
                if spec.method == "gaussian":
                    mask[t, h, w] = math.exp(-1 / (2 * d_s**2) * d2)
                elif spec.method == "butterworth":
                    mask[t, h, w] = 1 / (1 + (d2 / d_s**2) ** spec.order)
                elif spec.method == "ideal":
                    keep = d2 <= 2 * d_s if spec.convention == "authors" else d2 <= d_s**2
                    mask[t, h, w] = 1.0 if keep else 0.0
    return mask


@pytest.mark.parametrize("convention", ["exact", "authors"])
@pytest.mark.parametrize("method", ["gaussian", "butterworth", "ideal"])
@pytest.mark.parametrize("shape", [(16, 8, 8), (7, 6, 10)])
def test_mask_equals_per_element_reference(method, shape, convention):
    spec = FilterSpec(method, spatial=0.8, temporal=0.35, convention=convention)
    assert torch.allclose(lowpass_mask(spec, *shape), reference_mask(spec, *shape), atol=1e-12)


def test_box_mask_is_symmetric_around_dc():
    mask = lowpass_mask(FilterSpec("box", spatial=0.5, temporal=0.5), 8, 8, 8)
    # half-widths round(4 * 0.5) = 2 on each side of DC at index 4 -> indices 2..6
    expected = torch.zeros(8, 8, 8, dtype=torch.float64)
    expected[2:7, 2:7, 2:7] = 1
    assert torch.equal(mask, expected)
    # The authors' box is one bin short on the positive side: [c - h, c + h).
    authors = lowpass_mask(FilterSpec("box", spatial=0.5, temporal=0.5, convention="authors"), 8, 8, 8)
    expected[6, :, :] = expected[:, 6, :] = expected[:, :, 6] = 0
    assert torch.equal(authors, expected)


@pytest.mark.parametrize("method", ["gaussian", "butterworth", "ideal", "box"])
@pytest.mark.parametrize(
    "frames, size, spatial, temporal",
    [(2, 8, 1.0, 0.4), (3, 8, 1.0, 0.4), (16, 8, 1.0, 0.05), (16, 2, 0.05, 0.4), (15, 7, 0.3, 0.4), (1, 8, 1.0, 0.4)],
)
def test_the_mean_of_a_video_always_passes(method, frames, size, spatial, temporal):
    """DC is kept at 1 by every mask at every size and cut-off (the box filter used to round its
    half-width to 0 for 2-3 frames at d_t = 0.4, or 16 frames at d_t = 0.05, and erase the video;
    on odd axes the old grid missed DC and damped the mean)."""
    spec = FilterSpec(method, spatial=spatial, temporal=temporal)
    mask = lowpass_mask(spec, frames, size, size)
    assert mask[frames // 2, size // 2, size // 2] == 1.0
    # the window is symmetric around DC
    dc = (frames // 2, size // 2, size // 2)
    for axis, n in enumerate((frames, size, size)):
        for j in range(1, (n - 1) // 2 + 1):
            plus, minus = list(dc), list(dc)
            plus[axis] += j
            minus[axis] -= j
            assert mask[tuple(plus)] == mask[tuple(minus)]
    constant = torch.full((frames, 4, size, size), 0.7)
    assert torch.allclose(temporal_lowpass(constant, spec), constant, atol=1e-6)


def test_an_empty_authors_box_is_refused_with_a_message():
    from lib_elevator.errors import SettingsError

    spec = FilterSpec("box", spatial=1.0, temporal=0.4, convention="authors")
    with pytest.raises(SettingsError, match="keeps no frequency of a 2-frame"):
        temporal_lowpass(torch.ones(2, 4, 8, 8), spec)


def test_filter_applies_the_direct_fft_computation():
    torch.manual_seed(0)
    x = torch.randn(8, 4, 6, 6)
    spec = FilterSpec("gaussian", 1.0, 0.4)
    spectrum = torch.fft.fftshift(torch.fft.fftn(x.transpose(0, 1).double(), dim=(-3, -2, -1)), dim=(-3, -2, -1))
    spectrum = spectrum * lowpass_mask(spec, 8, 6, 6)
    expected = torch.fft.ifftn(torch.fft.ifftshift(spectrum, dim=(-3, -2, -1)), dim=(-3, -2, -1)).real
    assert torch.allclose(temporal_lowpass(x, spec), expected.transpose(0, 1).float(), atol=1e-5)


def test_filter_damps_a_temporal_oscillation_by_the_mask_value():
    frames, k = 16, 4  # cos(2 pi k t / F): temporal frequency index k, spatially constant
    t = torch.arange(frames, dtype=torch.float32)
    x = torch.cos(2 * math.pi * k * t / frames).view(frames, 1, 1, 1).expand(frames, 2, 8, 8).contiguous()
    spec = FilterSpec("gaussian", spatial=1.0, temporal=0.4)
    y = temporal_lowpass(x, spec)
    # in centred coordinates frequency +-k sits at +-2k/F; spatial frequency 0 sits at 0
    factor = math.exp(-0.5 * (2 * k / frames / 0.4) ** 2)
    assert torch.allclose(y, x * factor, atol=1e-5)
    energy_ratio = (y**2).sum() / (x**2).sum()
    assert abs(energy_ratio.item() - factor**2) < 1e-4


def test_constant_in_time_video_passes_unchanged_when_space_is_not_filtered():
    torch.manual_seed(1)
    frame = torch.randn(1, 4, 8, 8)
    video = frame.expand(12, -1, -1, -1).contiguous()
    out = temporal_lowpass(video, FilterSpec("gaussian", spatial=math.inf, temporal=0.25))
    assert torch.allclose(out, video, atol=1e-5)


def test_filter_mask_is_cached_per_shape_and_device():
    spec = FilterSpec("gaussian", 1.0, 0.4)
    first = _fft_order_mask(spec, 5, 4, 4, torch.device("cpu"))
    assert _fft_order_mask(spec, 5, 4, 4, torch.device("cpu")) is first
    assert _fft_order_mask(spec, 6, 4, 4, torch.device("cpu")) is not first


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(method="sharp"), "filter method"),
        (dict(spatial=0.0), "spatial cut-off"),
        (dict(temporal=-1.0), "temporal cut-off"),
    ],
)
def test_bad_filter_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FilterSpec(**kwargs)


# ------------------------------------------------------------------------------------ schedule


def test_alpha_tables_equal_diffusers():
    from diffusers import DDIMScheduler

    for schedule in ("scaled_linear", "linear"):
        ref = DDIMScheduler(beta_schedule=schedule, beta_start=0.00085, beta_end=0.012).alphas_cumprod
        assert torch.allclose(alphas_cumprod(schedule).float(), ref)
    # the two schedules put the same timestep at different noise levels
    assert sigma_of_alpha(alphas_cumprod("linear")[500]) > sigma_of_alpha(alphas_cumprod("scaled_linear")[500]) * 1.1


@pytest.mark.parametrize(
    "steps, spacing, offset", [(50, "leading", 1), (30, "leading", 1), (25, "trailing", 0), (20, "linspace", 0)]
)
def test_ddim_timesteps_equal_diffusers(steps, spacing, offset):
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(timestep_spacing=spacing, steps_offset=offset)
    scheduler.set_timesteps(steps)
    assert ddim_timesteps(steps, 1000, spacing, offset) == scheduler.timesteps.tolist()


def test_sigma_timestep_mapping_round_trips_per_table():
    for name in ("scaled_linear", "linear"):
        table = alphas_cumprod(name)
        for t in (1, 21, 500, 981, 999):
            assert timestep_of_sigma(table, sigma_of_alpha(table[t]).item()) == t
    sd, ad = alphas_cumprod("scaled_linear"), alphas_cumprod("linear")
    sigma = sigma_of_alpha(sd[801]).item()
    t_ad = nearest_timestep(ad, sigma)
    assert t_ad != 801 and abs(sigma_of_alpha(ad[t_ad]).item() / sigma - 1) < 0.02


def test_ddim_schedule_endings():
    table = alphas_cumprod()
    diffusers_like = ddim_schedule(table, 50, set_alpha_to_one=False, final_step=True)
    assert diffusers_like.steps == 50 and diffusers_like.sigmas[-1] == pytest.approx(sigma_of_alpha(table[0]).item())
    assert diffusers_like.clean_sigma == diffusers_like.sigmas[-1]
    webui_like = ddim_schedule(table, 50, final_step=False)
    assert webui_like.steps == 49 and webui_like.sigmas[-1] == pytest.approx(sigma_of_alpha(table[1]).item())
    assert webui_like.clean_sigma == 0.0
    # the WebUI's own timesteps: range(0, 1000, 1000 // steps) + 1, one more when 1000 % steps != 0
    assert webui_ddim_timesteps(50) == ddim_timesteps(50, 1000, "leading", 1)
    assert webui_ddim_timesteps(16) == [993 - 62 * k for k in range(17)]
    assert ddim_schedule(table, 16, final_step=False).steps == 16


def ddim_sigmas(steps):
    return ddim_schedule(alphas_cumprod(), steps).sigmas


def test_refine_points_in_both_notations_agree_with_the_paper():
    table = alphas_cumprod()
    assert refine_indices("10%,30%,50%,70%", ddim_sigmas(50), table) == (5, 15, 25, 35)
    assert refine_indices("45,35,25,15", ddim_sigmas(50), table) == (5, 15, 25, 35)  # "steps remaining"
    assert refine_indices("26,21,15,9", ddim_sigmas(30), table) == (4, 9, 15, 21)  # AnimateLCM
    assert refine_indices("13%,30%,50%,70%", ddim_sigmas(30), table) == (4, 9, 15, 21)
    assert refine_indices([0.1, "30%"], ddim_sigmas(20), table) == (2, 6)
    assert parse_refine_points("45") == (RefinePoint(remaining=45),)


def test_both_notations_name_the_same_steps_on_the_webui_ddim_at_every_step_count():
    """The WebUI's DDIM with S steps makes S - 1 updates when S divides 1000 (50 -> 49); the refine
    points must still name steps of an S-step DDIM schedule: at 50 steps "10%,30%,50%,70%" and
    "45,35,25,15" both refine at t = 881, 681, 481, 281, as the standalone does."""
    table = alphas_cumprod()
    webui50 = ddim_schedule(table, 50, final_step=False)
    for points in ("10%,30%,50%,70%", "45,35,25,15"):
        indices = refine_indices(points, webui50.sigmas, table, webui50.reference_steps)
        assert [nearest_timestep(table, webui50.sigmas[i]) for i in indices] == [881, 681, 481, 281]
    for steps in range(4, 101):
        paper = ddim_schedule(table, steps)
        for schedule in (paper, ddim_schedule(table, steps, final_step=False)):
            for k in range(0, steps - 1):
                by_fraction = refine_indices([RefinePoint(fraction=k / steps)], schedule.sigmas, table, steps)
                by_remaining = refine_indices([RefinePoint(remaining=steps - k)], schedule.sigmas, table, steps)
                assert by_fraction == by_remaining, (steps, k)
                if schedule is paper or 1000 % steps == 0:  # same timesteps as the paper's schedule
                    [index] = by_fraction
                    t = nearest_timestep(table, schedule.sigmas[index])
                    assert t == ddim_timesteps(steps)[min(k, len(schedule.sigmas) - 3)], (steps, k)


def karras_sigmas(steps, sigma_min=0.0292, sigma_max=14.6146, rho=7.0):
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return tuple((hi + k / (steps - 1) * (lo - hi)) ** rho for k in range(steps)) + (0.0,)


def test_refine_points_keep_their_noise_level_on_other_schedules():
    table = alphas_cumprod()
    karras = karras_sigmas(20)  # spends most steps at low noise: 70% of its steps is far below DDIM's 70%
    indices = refine_indices("10%,30%,50%,70%", karras, table)
    for index, k in zip(indices, (2, 6, 10, 14)):
        reference = ddim_sigmas(20)[k]
        nearest = min(karras[:-2], key=lambda s: abs(math.log(s / reference)))
        assert karras[index] == nearest
    assert indices[-1] < 14  # by step count it would have been step 14


@pytest.mark.parametrize(
    "points, message",
    [
        ("", "at least one"),
        ("abc", "not a percentage"),
        ("150%", "not a percentage"),
        ("-3", "not a percentage"),
        ("60", "falls on step"),  # 60 steps remaining of 50
        ("99%", "falls on step"),  # step 50 of 50 leaves no step after it
    ],
)
def test_bad_refine_points_are_explained(points, message):
    with pytest.raises(ValueError, match=message):
        refine_indices(points, ddim_sigmas(50), alphas_cumprod())
