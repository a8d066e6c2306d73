"""The standalone loop and the refine orchestrator, on a tiny real-architecture T2I model and a
small deterministic stand-in T2V model (the real T2V backends have their own tests)."""

import copy
import math

import pytest
import torch
from authors_loop import authors_loop_for

from lib_elevator.elevator import Refiner, plan_refinement
from lib_elevator.filters import temporal_lowpass
from lib_elevator.latent_space import SD1_LATENTS
from lib_elevator.noise import TorchNoise
from lib_elevator.schedule import alphas_cumprod, ddim_schedule
from lib_elevator.settings import Settings, SettingsError
from lib_elevator.standalone import Job, generate, make_schedule
from lib_elevator.t2v.base import PromptPair, T2VBackend


class StubT2V(T2VBackend):
    """A deterministic function in place of a video UNet, with ZeroScope's noise table."""

    kind, name, sampler, latent_space = "stub", "stub", "ddim", SD1_LATENTS

    def __init__(self, beta_schedule="scaled_linear"):
        self.alphas_cumprod = alphas_cumprod(beta_schedule)
        self.moves = []

    def encode_prompt(self, prompt, negative_prompt, device=None):
        return PromptPair(
            torch.full((1, 3, 8), len(prompt) / 10.0), torch.full((1, 3, 8), -len(negative_prompt) / 10.0)
        )

    def model_output(self, video, timestep, context):
        mixed = video + 0.1 * torch.roll(video, 1, dims=2)  # couples neighbouring frames, like a motion model
        return 0.5 * torch.tanh(mixed) + 0.01 * context.mean(dim=(1, 2)).view(-1, 1, 1, 1, 1)

    def to(self, device=None, dtype=None):
        self.moves.append(str(device))
        return self


class EchoT2V(StubT2V):
    """Returns the clean latent it is given: isolates what the orchestrator itself does."""

    def denoise(self, clean, start, timesteps, prompts, guidance, noise, before_call=None, unused_draw=False,
                window=None, overlap=0):
        self.seen = dict(start=start, timesteps=list(timesteps), window=window, overlap=overlap)
        return clean


@pytest.fixture(scope="module")
def t2i(model_cache):
    from lib_elevator.loaders import load_t2i
    from lib_elevator.tiny.t2i import build_tiny_t2i_folder

    return load_t2i(build_tiny_t2i_folder(str(model_cache / "loop-sd1"), kind="sd1", seed=0))


SMALL = dict(frames=4, refine_points="11,8,5,3", t2v_steps=2, t2v_grid_steps=12, inversion_prompt="negative")
AUTHORS = dict(frames=4, refine_points="11,8,5,3", t2v_steps=2, compat="authors")
JOB = Job(prompt="a lighthouse", negative_prompt="blurry", width=32, height=32, steps=12, guidance=7.5, seed=3)


def run_authors(t2i, settings, job, pnp=True, on_step=None, t2v=None):
    return authors_loop_for(
        t2i, t2v or StubT2V(), job, settings.replace(pnp=pnp), [11, 8, 5, 3], TorchNoise(job.seed), on_step
    )


def count_rows(t2i):
    rows = []
    handle = t2i.unet.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
    return rows, handle


@pytest.fixture(scope="module")
def t2i_f64(t2i):
    return copy.deepcopy(t2i).to(dtype=torch.float64)


@pytest.mark.parametrize("beta_schedule", ["scaled_linear", "linear"])
@pytest.mark.parametrize("pnp", [True, False])
def test_compat_authors_equals_the_authors_loop_at_every_step_with_fewer_evaluations(t2i_f64, pnp, beta_schedule):
    """With compat="authors" the standalone reproduces the authors' loop (their inversion anchor
    groups, negative-prompt inversion, T2V grid and SDEdit start): in float64 the latents agree to
    rounding after every step, while the wasted evaluations are not made. The linear table is
    AnimateDiff's, where their timestep-matched SDEdit start differs from our noise-level match."""
    settings = Settings(**AUTHORS, pnp=pnp)
    rows, handle = count_rows(t2i_f64)
    ours_steps, theirs_steps = [], []
    try:
        ours = generate(t2i_f64, StubT2V(beta_schedule), JOB, settings, noise=TorchNoise(JOB.seed),
                        on_step=lambda i, x: ours_steps.append(x))
        our_rows = sum(rows)
    finally:
        handle.remove()
    reference, ref_rows = run_authors(t2i_f64, settings, JOB, pnp=pnp, t2v=StubT2V(beta_schedule),
                                      on_step=lambda i, x: theirs_steps.append(x))
    assert ours.latents.dtype == torch.float64 and len(ours_steps) == len(theirs_steps) == JOB.steps
    for i, (a, b) in enumerate(zip(ours_steps, theirs_steps)):
        assert torch.allclose(a, b, atol=1e-10, rtol=0), i
    assert torch.allclose(ours.latents, reference.cpu(), atol=1e-10, rtol=0)
    f = settings.frames
    # refine at 1, 4, 7, 9 of 12; full inversion paths of 10, 7, 4, 2 steps; PnP pays only at steps 3
    # and 6 (the step right after each refine reuses the main call, a refine step needs none)
    assert ours.calls == {"t2i": 12, "t2v": 8, "inversion": 23, "pnp": (2 if pnp else 0)}
    assert our_rows == 12 * 2 * f + 23 * f + ours.calls["pnp"] * f
    # the authors: a cond+uncond PnP call at every step while a trajectory lasts: 2-4, 5-7, 8-9, 10
    assert ref_rows["t2i"] == 12 * 2 * f + 23 * f + (9 * 2 * f if pnp else 0)


def test_without_compat_the_documented_differences_change_the_video(t2i_f64):
    """compat="none" (our choices: one anchor group in the inversion, the empty inversion prompt, the
    fixed 50-step T2V grid, the noise-level SDEdit start) is not the authors' result; each of the
    switches on its own moves it."""
    reference, _ = run_authors(t2i_f64, Settings(**AUTHORS), JOB)
    ours = generate(t2i_f64, StubT2V(), JOB, Settings(**{**AUTHORS, "compat": "none"}),
                    noise=TorchNoise(JOB.seed)).latents
    assert (ours - reference).abs().max() > 1e-4
    # ... and our default with only the authors' prompt and grid differs by the anchor groups alone
    grid = Settings(**{**AUTHORS, "compat": "none"}, inversion_prompt="negative", t2v_grid_steps=JOB.steps)
    only_groups = generate(t2i_f64, StubT2V(), JOB, grid, noise=TorchNoise(JOB.seed)).latents
    assert (only_groups - reference).abs().max() > 1e-6


def test_loop_in_float32_stays_close_to_the_float64_reference(t2i, t2i_f64):
    settings = Settings(**SMALL)
    ours = generate(t2i, StubT2V(), JOB, settings).latents
    exact = generate(t2i_f64, StubT2V(), JOB, settings).latents
    assert ours.dtype == torch.float32
    # rounding of 12 steps and 4 refines through a random network; relative to values up to ~12
    assert (ours.double() - exact).abs().max() < 1e-4


@pytest.mark.parametrize("extra", [{}, {"anchor": "first_prev"}, {"compat": "authors", "frames": 6}],
                         ids=["first", "first_prev", "authors' two anchor groups"])
@pytest.mark.parametrize("chunk", [1, 2, 4])
def test_frames_in_chunks_give_the_unchunked_video(t2i_f64, chunk, extra):
    """Chunks share the anchor frame's keys/values (and the previous frame's across a chunk boundary):
    the same latents as one call over all frames, with calls of at most `chunk` frames per group."""
    settings = Settings(**{**SMALL, "frames": 5, **extra})
    whole = generate(t2i_f64, StubT2V(), JOB, settings).latents
    rows, handle = count_rows(t2i_f64)
    try:
        chunked = generate(t2i_f64, StubT2V(), JOB, settings.replace(frame_chunk=chunk)).latents
    finally:
        handle.remove()
    assert max(rows) <= 2 * chunk  # two guidance groups of at most `chunk` frames a call
    assert torch.allclose(chunked, whole, rtol=0, atol=1e-10)


def test_loop_is_deterministic_per_seed_and_pnp_matters(t2i):
    settings = Settings(**SMALL)
    a = generate(t2i, StubT2V(), JOB, settings)
    b = generate(t2i, StubT2V(), JOB, settings)
    c = generate(t2i, StubT2V(), Job(**{**JOB.__dict__, "seed": 4}), settings)
    d = generate(t2i, StubT2V(), JOB, settings.replace(pnp=False))
    assert torch.equal(a.latents, b.latents) and (a.frames == b.frames).all()
    assert not torch.allclose(a.latents, c.latents)
    assert not torch.allclose(a.latents, d.latents)


def test_progress_reports_every_planned_call(t2i):
    settings = Settings(**SMALL)
    stages = []
    generate(t2i, StubT2V(), JOB, settings, progress=stages.append)
    plan = plan_refinement(
        settings, make_schedule(JOB.schedule, t2i, JOB.steps), t2i.alphas_cumprod, StubT2V().alphas_cumprod
    )
    assert len(stages) == plan.total_calls(settings)


def test_offloaded_t2v_visits_the_device_only_while_refining(t2i, monkeypatch):
    t2v, unet_moves = StubT2V(), []
    original_to = t2i.unet.to
    monkeypatch.setattr(
        t2i.unet, "to", lambda *a, **k: (unet_moves.append((len(t2v.moves), a or k)), original_to(*a, **k))[1]
    )
    generate(t2i, t2v, JOB, Settings(**SMALL), offload_t2v=True)
    assert t2v.moves == ["cpu", "cpu"] * 4  # to the (CPU) device and back, at each of the 4 refine steps
    # the T2I UNet leaves before the T2V model arrives and comes back after it left, each time
    assert [count for count, _ in unet_moves] == [0, 2, 2, 4, 4, 6, 6, 8]


def test_bad_jobs_are_refused_before_any_work(t2i):
    t2v = StubT2V()
    with pytest.raises(SettingsError, match="width: must be a positive multiple of 8"):
        generate(t2i, t2v, Job(prompt="x", width=30, height=32), Settings(**SMALL))
    with pytest.raises(SettingsError, match="frames"):
        generate(t2i, t2v, JOB, Settings(**{**SMALL, "frames": 1}))
    with pytest.raises(SettingsError, match="refine_points.*falls on step"):
        generate(t2i, t2v, JOB, Settings(**{**SMALL, "refine_points": "1"}))
    with pytest.raises(SettingsError, match="t2v_steps: 8 T2V steps do not fit"):
        generate(t2i, t2v, JOB, Settings(**{**SMALL, "t2v_steps": 8}))


# ------------------------------------------------------------------------------- orchestrator


def make_refiner(settings, t2v, schedule):
    plan = plan_refinement(settings, schedule, alphas_cumprod(), t2v.alphas_cumprod)
    return Refiner(t2v, settings, plan, t2v.encode_prompt("p", "n"), TorchNoise(0)), plan


def test_orchestrator_with_an_echo_t2v_filters_except_at_the_last_step():
    t2v = EchoT2V()
    settings = Settings(frames=4, refine_points="10%,50%")
    schedule = ddim_schedule(alphas_cumprod(), 20, set_alpha_to_one=True)
    refiner, plan = make_refiner(settings, t2v, schedule)
    clean = torch.randn(4, 4, 8, 8)
    assert plan.refine_at == (2, 10)
    assert torch.equal(refiner.refine_clean(10, clean), clean)  # last refine: no filter, echo T2V
    assert torch.allclose(refiner.refine_clean(2, clean), temporal_lowpass(clean, settings.filter_spec()))
    # T2V noise level: the T2V timestep with the T2I's sigma (same table here), stride 1000/50
    start = 1000 // 20 * (20 - 1 - 2) + 1
    assert t2v.seen == dict(start=start, timesteps=[start - 20 * k for k in range(8)], window=16, overlap=4)
    refiner, _ = make_refiner(settings.replace(t2v_window=8, t2v_overlap=2), t2v, schedule)
    refiner.refine_clean(10, clean)
    assert (t2v.seen["window"], t2v.seen["overlap"]) == (8, 2)  # the settings reach the T2V model


def test_compat_authors_steps_animatelcm_on_the_lcm_grid_from_the_t2i_step():
    """The authors' AnimateLCM: noise at the T2I's timestep t_i on the linear table, then LCM steps on
    diffusers' LCMScheduler grid for S steps from index i (at S = 12, i = 2: noise at 748, steps at 839
    and 759, as measured on their pipeline)."""
    t2v = EchoT2V(beta_schedule="linear")
    t2v.sampler = "lcm"
    schedule = ddim_schedule(alphas_cumprod(), 12)
    plan = plan_refinement(Settings(frames=2, refine_points="10", t2v_steps=2, compat="authors"), schedule,
                           alphas_cumprod(), t2v.alphas_cumprod, "lcm")
    assert plan.refine_at == (2,)
    assert plan.t2v_start[2] == 748 and plan.t2v_timesteps[2] == (839, 759)
    from lib_elevator.elevator import lcm_grid

    assert lcm_grid(12) == [999, 919, 839, 759, 679, 599, 499, 419, 339, 259, 179, 99]
    assert plan.t2v_unused_draw == {2: True}  # their scheduler draws after the last step, the grid goes on
    # ... and so does the backend, so every later draw keeps the authors' order
    draws = []

    class Counting(TorchNoise):
        def randn(self, shape):
            draws.append(shape)
            return super().randn(shape)

    lcm = StubT2V("linear")
    lcm.sampler = "lcm"
    prompts = lcm.encode_prompt("p", "n")
    lcm.denoise(torch.zeros(2, 4, 4, 4), 748, (839, 759), prompts, 2.0, Counting(0))
    assert len(draws) == 2  # SDEdit noise, one LCM re-noise
    lcm.denoise(torch.zeros(2, 4, 4, 4), 748, (839, 759), prompts, 2.0, Counting(0), unused_draw=True)
    assert len(draws) == 5
    with pytest.raises(SettingsError, match="t2v_steps: 3 T2V steps from step 10 run past the end"):
        plan_refinement(Settings(frames=2, refine_points="2", t2v_steps=3, compat="authors"), schedule,
                        alphas_cumprod(), t2v.alphas_cumprod, "lcm")


def test_orchestrator_maps_noise_levels_between_different_tables():
    t2v = EchoT2V(beta_schedule="linear")  # AnimateDiff's table
    schedule = ddim_schedule(alphas_cumprod(), 50, set_alpha_to_one=True)
    refiner, plan = make_refiner(Settings(frames=2, refine_points="45"), t2v, schedule)
    start = plan.t2v_start[5]
    sigma_t2i = schedule.sigmas[5]
    sigma_t2v = math.sqrt((1 - t2v.alphas_cumprod[start]) / t2v.alphas_cumprod[start])
    assert start != 881 and abs(sigma_t2v / sigma_t2i - 1) < 0.01


def test_a_rescaled_signal_is_matched_by_the_noise_to_signal_ratio_the_model_sees():
    """VideoCrafter2 trains on x_t = s_t sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (s_t = 0.7 above t = 400):
    SDEdit must start where sqrt(1 - abar_t) / (s_t sqrt(abar_t)) is the T2I's sigma, not sigma_t."""

    class Rescaled(StubT2V):
        def signal_scale(self, timestep):
            return 1.0 - 0.3 * min(timestep, 399) / 399

    t2v = Rescaled()
    schedule = ddim_schedule(alphas_cumprod(), 50)
    plan = plan_refinement(Settings(frames=2, refine_points="45"), schedule, alphas_cumprod(), t2v.noise_level_table)
    start, sigma = plan.t2v_start[5], schedule.sigmas[5]
    a = t2v.alphas_cumprod[start].item()
    seen = math.sqrt(1 - a) / (t2v.signal_scale(start) * math.sqrt(a))
    assert abs(seen / sigma - 1) < 0.01 and start < 881  # the same table without s_t would give 881
    assert torch.equal(StubT2V().noise_level_table, StubT2V().alphas_cumprod)  # s_t = 1: the table itself


def test_orchestrator_returns_the_inversion_of_the_refined_latent():
    t2v = EchoT2V()
    schedule = ddim_schedule(alphas_cumprod(), 10, set_alpha_to_one=True)
    refiner, plan = make_refiner(Settings(frames=2, refine_points="50%"), t2v, schedule)
    clean = torch.randn(2, 4, 4, 4)
    calls = []

    def invert(x, sigma):
        calls.append(sigma)
        return torch.zeros_like(x)  # "everything is noise": each step adds (sigma_b - sigma_a) * x_in / sigma_b

    trajectory = refiner.refine(5, clean, invert)
    assert calls == plan.inversion_paths[5][1:] and list(trajectory) == calls
    assert schedule.sigmas[6] in trajectory
