"""Segmenting the host's sampler function (lib_elevator/webui/sampler_hook.py), with sampler
functions written to the host's calling conventions (tests/host_stub/samplers.py): a k-diffusion
Euler, a k-diffusion ancestral sampler drawing from a shared generator, and a CompVis DDIM over
ascending integer timesteps, all on the exact denoiser of Gaussian data.

sampler_hook.py is pure (no host modules), so these tests need no stand-in on sys.path."""

import functools
import inspect
import math
from types import SimpleNamespace

import pytest
import torch
from host_stub import samplers

from lib_elevator.webui import sampler_hook
from lib_elevator.webui.sampler_hook import KDIFFUSION, TIMESTEPS, RefineHooks, segmented

STEPS = 8
TABLE = samplers.sd_alphas_cumprod()
SHAPE = (3, 2, 4, 4)  # 3 frames


class Family:
    """One host sampler family: its function, model, schedule kwargs and latent form."""

    def __init__(self, name, func, kind, extra=None):
        self.name, self.func, self.kind, self.extra = name, func, kind, extra or {}
        data = samplers.GaussianData(torch.linspace(-1, 1, 32, dtype=torch.float64).reshape(1, 2, 4, 4), 0.5)
        if kind == KDIFFUSION:
            self.model = data.k_model
            self.schedule = {"sigmas": samplers.karras_free_sigmas(TABLE, STEPS)}
            self.sigmas = self.schedule["sigmas"].tolist()
        else:
            self.model = samplers.TimestepsModel(data, TABLE)
            timesteps = torch.arange(1, 1000, 111)  # 9 ascending timesteps = 8 updates
            self.schedule = {"timesteps": timesteps}
            # the adapter's float64 sigmas (trajectory keys must be these floats); checked against an
            # independent computation in test_the_timesteps_family_is_read_through_the_alphas_table
            self.sigmas = list(sampler_hook.host_schedule(self.schedule, TABLE).sigmas)
        assert len(self.sigmas) == STEPS + 1

    def x0(self):
        x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        return x * self.sigmas[0] if self.kind == KDIFFUSION else x

    def to_k(self, x, position):
        return x if self.kind == KDIFFUSION else x * math.sqrt(1.0 + self.sigmas[position] ** 2)

    def from_k(self, x, position):
        return x if self.kind == KDIFFUSION else x / math.sqrt(1.0 + self.sigmas[position] ** 2)

    def slice(self, start, stop):
        if self.kind == KDIFFUSION:
            return {"sigmas": self.schedule["sigmas"][start : stop + 1]}
        ts = self.schedule["timesteps"]
        return {"timesteps": ts[len(ts) - 1 - stop : len(ts) - start]}

    def run(self, func, x, callback=None, seed=7, **schedule):
        samplers.seed_noise(seed)
        return func(
            self.model,
            x,
            extra_args={"cond": "c"},
            callback=callback,
            disable=False,
            **(schedule or self.schedule),
            **self.extra,
        )


FAMILIES = [
    Family("euler", samplers.sample_euler, KDIFFUSION),
    # churn: the split run equals the unsplit one only if each slice gets its share of s_churn
    Family("euler_churn", samplers.sample_euler, KDIFFUSION, {"s_churn": 2.0}),
    Family("euler_ancestral", samplers.sample_euler_ancestral, KDIFFUSION, {"eta": 1.0}),
    Family("ddim", samplers.ddim, TIMESTEPS),
    Family("ddim_eta", samplers.ddim, TIMESTEPS, {"eta": 0.5}),
]
DETERMINISTIC = [f for f in FAMILIES if f.name in ("euler", "ddim")]
ids = [f.name for f in FAMILIES]


class Spy:
    """The host's sampler function, recording every call (input, schedule slice, output)."""

    def __init__(self, func):
        self.func, self.calls = func, []
        functools.update_wrapper(self, func)

    def __call__(self, model, x, *args, **kwargs):
        out = self.func(model, x, *args, **kwargs)
        schedule = {k: kwargs[k] for k in ("sigmas", "timesteps") if k in kwargs}
        self.calls.append({"x": x, "schedule": schedule, "out": out, "kwargs": kwargs})
        return out


class Hooks(RefineHooks):
    """Records what the segmenter hands over; `trajectory(i, denoised)` decides the refine result."""

    def __init__(self, refine_at=(), pnp=False, trajectory=None, reused=None):
        self.refine_at, self.pnp = tuple(refine_at), pnp
        self.trajectory = trajectory
        self.reused = reused
        self.refined, self.cond_calls, self.reused_calls, self.steps = [], [], [], []

    def plan(self, schedule):
        self.schedule = schedule
        return SimpleNamespace(refine_at=self.refine_at)

    def refine(self, index, denoised):
        self.refined.append((index, denoised))
        return self.trajectory(index, denoised)

    def cond_denoised(self, latent, sigma):
        self.cond_calls.append((latent, sigma))
        return cond_prediction(latent, sigma)

    def reused_cond_denoised(self, schedule, position, host_x):
        self.reused_calls.append((schedule, position, host_x))
        return self.reused

    def host_step(self, index):
        self.steps.append(index)


def cond_prediction(latent, sigma):
    return latent * 0.5 + sigma


def recording_callback(log):
    return lambda d: log.append(d)


@pytest.mark.parametrize("family", FAMILIES, ids=ids)
def test_a_plan_without_refine_points_equals_the_unsplit_run(family):
    reference = family.run(family.func, family.x0())
    hooks = Hooks()
    seen = []
    out = family.run(segmented(family.func, hooks, TABLE), family.x0(), callback=recording_callback(seen))
    assert torch.equal(out, reference)
    assert [d["i"] for d in seen] == list(range(STEPS)) == hooks.steps


@pytest.mark.parametrize("family", FAMILIES, ids=ids)
def test_refine_points_that_change_nothing_equal_the_unsplit_run(family):
    """Split at steps 2 and 5 and continue from the sampler's own latent: the same result, and the
    ancestral/eta noise stream continues across the segments."""
    reference = family.run(family.func, family.x0())
    spy = Spy(family.func)
    hooks = Hooks([2, 5], trajectory=lambda i, d: {family.sigmas[i + 1]: family.to_k(spy.calls[-1]["out"], i + 1)})
    out = family.run(segmented(spy, hooks, TABLE), family.x0())
    assert len(spy.calls) == 3
    if family.kind == KDIFFUSION:
        assert torch.equal(out, reference)
    else:  # the DDPM <-> k-form round trip costs at most a few ulps of float64
        assert torch.allclose(out, reference, rtol=0, atol=1e-12)


@pytest.mark.parametrize("family", FAMILIES, ids=ids)
def test_segments_denoised_and_continuation_latents_are_exact(family):
    spy = Spy(family.func)
    injected = {}

    def trajectory(i, denoised):
        injected[i] = torch.randn(SHAPE, generator=torch.Generator().manual_seed(100 + i), dtype=torch.float64)
        return {family.sigmas[i + 1]: injected[i], 123.0: torch.zeros(1)}

    hooks = Hooks([2, 5], trajectory=trajectory)
    seen = []
    x = family.x0()
    out = family.run(segmented(spy, hooks, TABLE), x, callback=recording_callback(seen))

    # segment boundaries: steps 0-2, 3-5, 6-7; everything else is passed through to each segment
    for call, (start, stop) in zip(spy.calls, [(0, 3), (3, 6), (6, STEPS)]):
        expected = family.slice(start, stop)
        (key,) = expected
        assert torch.equal(call["schedule"][key], expected[key])
        assert call["kwargs"]["extra_args"] == {"cond": "c"}
        extra = dict(family.extra)
        if "s_churn" in extra:  # each slice gets its share, so every step keeps the unsplit gamma
            extra["s_churn"] = family.extra["s_churn"] * (stop - start) / STEPS
        assert {k: call["kwargs"][k] for k in family.extra} == extra
    # continuation latents: the input, then the trajectory's latent at sigma_{i+1} in the sampler's form
    assert spy.calls[0]["x"] is x
    assert torch.equal(spy.calls[1]["x"], family.from_k(injected[2], 3))
    assert torch.equal(spy.calls[2]["x"], family.from_k(injected[5], 6))
    assert out is spy.calls[2]["out"]
    # refine gets the callback's denoised of step i
    assert [i for i, _ in hooks.refined] == [2, 5]
    by_step = {d["i"]: d["denoised"] for d in seen}
    assert hooks.refined[0][1] is by_step[2] and hooks.refined[1][1] is by_step[5]
    # ... which is the clean prediction at step i of the sampler started from the injected latent
    # (deterministic samplers; the others depend on where the noise stream stands)
    if family in DETERMINISTIC:
        own = []
        family.run(family.func, family.from_k(injected[2], 3), callback=recording_callback(own), **family.slice(3, 6))
        assert torch.equal(hooks.refined[1][1], own[2]["denoised"])
    # the host callback sees global, consecutive step indices
    assert [d["i"] for d in seen] == list(range(STEPS)) == hooks.steps


def test_the_timesteps_family_is_read_through_the_alphas_table():
    timesteps = samplers.ddim_timesteps(10)
    schedule = sampler_hook.host_schedule({"timesteps": timesteps}, TABLE)
    assert schedule.family == TIMESTEPS and schedule.steps == len(timesteps) - 1
    expected = [samplers.sigma_of(float(TABLE.double()[t])) for t in reversed(timesteps.tolist())]
    assert schedule.sigmas == pytest.approx(expected, rel=1e-12)
    assert schedule.sigmas[0] > schedule.sigmas[-1] > 0
    assert schedule.sigma_schedule().sigmas == schedule.sigmas
    x = torch.ones(1)
    assert torch.allclose(schedule.from_k(schedule.to_k(x, 3), 3), x, rtol=1e-6, atol=0)
    assert schedule.to_k(x, 2).item() == pytest.approx(math.sqrt(1 + expected[2] ** 2))


def test_samplers_without_a_schedule_argument_are_refused():
    """DPM fast/adaptive take sigma_min/sigma_max/n: nothing to split."""

    def sample_dpm_fast(model, x, sigma_min, sigma_max, n, extra_args=None, callback=None, disable=None):
        raise AssertionError("must not run")

    wrapped = segmented(sample_dpm_fast, Hooks(), TABLE)
    with pytest.raises(RuntimeError, match="neither sigmas nor timesteps"):
        wrapped(None, torch.zeros(1), sigma_min=0.1, sigma_max=10.0, n=5)


@pytest.mark.parametrize("func", [samplers.sample_euler, samplers.sample_euler_ancestral, samplers.ddim])
def test_the_wrapper_keeps_the_signature_the_host_inspects(func):
    wrapped = segmented(func, Hooks(), TABLE)
    assert inspect.signature(wrapped) == inspect.signature(func)
    assert wrapped.__wrapped__ is func and wrapped.__name__ == func.__name__
    parameters = inspect.signature(wrapped).parameters
    if func is samplers.sample_euler_ancestral:
        assert {"sigmas", "eta", "s_noise", "noise_sampler"} <= set(parameters)
    if func is samplers.ddim:
        assert {"timesteps", "eta"} <= set(parameters) and "sigmas" not in parameters


def test_on_run_sees_the_schedule_and_plan_before_sampling():
    family = FAMILIES[0]
    hooks = Hooks([3], trajectory=lambda i, d: {family.sigmas[i + 1]: d})
    seen = []
    family.run(
        segmented(family.func, hooks, TABLE, on_run=lambda schedule, plan: seen.append((schedule, plan))), family.x0()
    )
    ((schedule, plan),) = seen
    assert schedule.family == KDIFFUSION and schedule.sigmas == tuple(family.sigmas)
    assert plan.refine_at == (3,)


# ------------------------------------------------------------------------------ PnP segments


def pnp_expected(family, trajectory, reused, start, pnp_stop):
    """Hand-computed PnP: one-step segments start..pnp_stop-1, then the rest unsplit."""
    x_k = trajectory[family.sigmas[start]]
    for p in range(start, pnp_stop):
        s, s_next = family.sigmas[p], family.sigmas[p + 1]
        stepped = family.to_k(family.run(family.func, family.from_k(x_k, p), **family.slice(p, p + 1)), p + 1)
        now, nxt = trajectory[s], trajectory[s_next]
        denoised = reused if (p == start and reused is not None) else cond_prediction(now, s)
        replayed = now + (s_next - s) * (now - denoised) / s
        x_k = stepped + (nxt - replayed)
    return family.run(family.func, family.from_k(x_k, pnp_stop), **family.slice(pnp_stop, STEPS))


@pytest.mark.parametrize("reuse", [True, False], ids=["reused", "recomputed"])
@pytest.mark.parametrize("family", DETERMINISTIC, ids=[f.name for f in DETERMINISTIC])
def test_pnp_one_step_segments(family, reuse):
    """Refine at step 2; the trajectory covers sigma_3..sigma_6, so steps 3, 4, 5 are one-step
    segments with the PnP correction and steps 6-7 run as one segment."""
    levels = {
        family.sigmas[p]: torch.randn(SHAPE, generator=torch.Generator().manual_seed(p), dtype=torch.float64)
        for p in range(3, 7)
    }
    reused = torch.full(SHAPE, 0.25, dtype=torch.float64) if reuse else None
    spy = Spy(family.func)
    hooks = Hooks([2], pnp=True, trajectory=lambda i, d: dict(levels), reused=reused)
    seen = []
    out = family.run(segmented(spy, hooks, TABLE), family.x0(), callback=recording_callback(seen))

    expected = pnp_expected(family, levels, reused, 3, 6)
    if family.kind == KDIFFUSION:
        assert torch.equal(out, expected)
    else:
        assert torch.allclose(out, expected, rtol=0, atol=1e-12)
    # segments: 0-2, then 3, 4, 5 one step each, then 6-7
    lengths = [len(next(iter(c["schedule"].values()))) - 1 for c in spy.calls]
    assert lengths == [3, 1, 1, 1, 2]
    # the host's own cond prediction is asked for at the first position only, on the injected latent
    ((schedule, position, host_x),) = hooks.reused_calls
    assert position == 3 and schedule.family == family.kind
    assert torch.equal(host_x, family.from_k(levels[family.sigmas[3]], 3))
    # cond_denoised on the trajectory's latent at each later position (and the first when not reused)
    positions = [3, 4, 5] if not reuse else [4, 5]
    assert [sigma for _, sigma in hooks.cond_calls] == [family.sigmas[p] for p in positions]
    for (latent, _), p in zip(hooks.cond_calls, positions):
        assert latent is levels[family.sigmas[p]]
    assert [d["i"] for d in seen] == list(range(STEPS)) == hooks.steps


def test_pnp_off_continues_in_one_segment():
    family = FAMILIES[0]
    levels = {family.sigmas[p]: torch.zeros(SHAPE, dtype=torch.float64) for p in range(3, 7)}
    spy = Spy(family.func)
    hooks = Hooks([2], pnp=False, trajectory=lambda i, d: dict(levels))
    family.run(segmented(spy, hooks, TABLE), family.x0())
    assert [len(c["schedule"]["sigmas"]) - 1 for c in spy.calls] == [3, 5]
    assert hooks.cond_calls == [] and hooks.reused_calls == []
