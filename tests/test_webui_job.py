"""A VideoElevator job inside the stand-in host (lib_elevator/webui/job.py with compat, models,
host_model, attention, sampler_hook and scripts/videoelevator.py): what the hooks do to `p`, how bad
input is refused, the guaranteed clean-up around `p.sample`, and whole jobs run through a miniature
of the host's txt2img path (tests/host_stub/minihost.py) with a weightless T2V backend."""

import json
import os
from types import SimpleNamespace

import host_stub
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRAMES = 4


@pytest.fixture
def webui(tmp_path):
    with host_stub.installed(tmp_path) as host:
        yield host


@pytest.fixture
def env(webui, monkeypatch):
    """The extension loaded as the host loads it, a fake SD1 checkpoint, a ZeroScope-like model in
    models/VideoElevator, and `models.get_t2v` answering with a weightless backend. Torch runs on one
    thread: the tensors are tiny, and a busy 2-core runner makes thread hand-offs cost 100x."""
    from host_stub import minihost

    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    script_module = webui.load_script(os.path.join(ROOT, "scripts", "videoelevator.py"))
    job, models, attention = webui.adapter("job"), webui.adapter("models"), webui.adapter("a1111.attention")
    webui.shared.sd_model = minihost.FakeSDModel()
    minihost.zeroscope_layout(os.path.join(webui.paths.models_path, "VideoElevator", "tiny-zs"))
    t2v = minihost.FakeT2V()
    loaded = []
    monkeypatch.setattr(models, "get_t2v", lambda model: loaded.append(model) or t2v)
    yield SimpleNamespace(
        host=webui,
        mini=minihost,
        job=job,
        models=models,
        attention=attention,
        t2v=t2v,
        loaded=loaded,
        script=script_module.VideoElevatorScript(),
        args=webui.adapter("args"),
    )
    torch.set_num_threads(threads)


def settings(**changes):
    return {
        "enable": True,
        "t2v_model": "tiny-zs",
        "frames": FRAMES,
        "refine_points": "30%,60%",
        "t2v_steps": 2,
        "formats": ["GIF", "PNG"],
        **changes,
    }


def processing(env, **fields):
    return env.mini.Processing(env.host.outputs_root, **fields)


def self_attention(env):
    return env.host.shared.sd_model.model.diffusion_model.self_attention()


def wrapped_modules(env):
    return [m for m in self_attention(env) if "forward" in m.__dict__]


# ------------------------------------------------------------------------------ before_process


@pytest.mark.parametrize(
    "args",
    [
        [],
        [False, "tiny-zs", 4],
        [{"enable": False, "frames": 1}],
        [{}],
        pytest.param([{"enable": "false", "t2v_model": "tiny-zs"}], id="text-false"),
    ],
)
def test_a_disabled_job_changes_nothing(env, args):
    p = processing(env)
    before = dict(vars(p))
    env.job.before_process(p, args)
    assert vars(p) == before and "sample" not in vars(p)
    assert env.job.job_of(p) is None


def test_every_job_start_removes_leftover_wrappers(env):
    env.attention.install(env.host.shared.sd_model.model.diffusion_model, FRAMES, "first")
    assert len(wrapped_modules(env)) == 2
    env.job.before_process(processing(env), [False])
    assert wrapped_modules(env) == []


def test_a_good_job_prepares_p(env):
    p = processing(env, n_iter=2)
    env.job.before_process(p, [settings()])
    parsed = env.args.from_positional([settings()])
    assert p.batch_size == FRAMES and p.n_iter == 2 and p.do_not_save_grid is True
    assert p.extra_generation_params == {"VideoElevator": env.args.to_infotext(parsed)}
    assert "sample" in vars(p) and callable(p.sample)
    job = env.job.job_of(p)
    assert isinstance(job, env.job.WebUIJob) and job.frames == FRAMES and job.parsed == parsed
    assert job.model["name"] == "tiny-zs" and job.model["kind"] == "zeroscope"
    # the positional UI form prepares the same job
    q = processing(env)
    env.job.before_process(q, [parsed.public()[name] for name in env.args.ARG_NAMES])
    assert q.batch_size == FRAMES and env.job.job_of(q).parsed == parsed


BAD_JOBS = [
    ("frames", {"frames": 1}, {}, None),
    ("frame", {"frame": 4}, {}, None),
    ("t2v_model", {"t2v_model": "not-there"}, {}, None),
    ("t2v_model", {"t2v_model": ""}, {}, None),
    ("sampler_name", {}, {"sampler_name": "DPM adaptive"}, None),
    ("sampler_name", {}, {"sampler_name": "DPM fast"}, None),
    ("sampler_name", {}, {"sampler_name": "UniPC"}, None),
    ("sampler_name", {}, {"sampler_name": "Restart"}, None),
    ("prompt", {}, {"prompt": "a cat AND a dog"}, None),
    ("prompt", {}, {"prompt": ["a boat", "a cat AND a dog"]}, None),
    ("refiner_checkpoint", {}, {"refiner_checkpoint": "sd_xl_refiner"}, None),
    ("host", {}, {}, lambda host: unsupported_host(host.adapter("hosts"))),
]


def unsupported_host(hosts):
    info = hosts.HostInfo(hosts.FORGE_CLASSIC, "v1.10.1-RC-1.7.0")
    hosts._current = hosts.build(info)  # what current() returns in such a host


@pytest.mark.parametrize("field, ve, fields, setup", BAD_JOBS, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD_JOBS)])
def test_a_bad_job_is_refused_from_p_sample_naming_the_field(env, field, ve, fields, setup):
    if setup is not None:
        setup(env.host)
    p = processing(env, **fields)
    env.job.before_process(p, [settings(**ve)])  # hooks must not raise: the host would swallow it
    assert p.batch_size == 1 and p.do_not_save_grid is False and p.extra_generation_params == {}
    assert env.job.job_of(p) is None
    with pytest.raises(env.job.VideoElevatorError) as error:
        p.sample(None, None, [1], [1], 0.0, ["x"])
    assert str(error.value).startswith(f"VideoElevator: {field}: ")


# The loaded model is checked when sampling starts (a checkpoint override, and Forge's first load,
# happen after before_process), before the sampler's first step.
BAD_MODELS = [
    ("checkpoint", lambda host: setattr(host.shared.sd_model, "is_sd3", True)),
    ("checkpoint", lambda host: setattr(host.shared.sd_model.model, "conditioning_key", "crossattn-adm")),
    ("hypertile", lambda host: host.shared.opts.data.update(hypertile_enable_unet=True)),
    ("sd_unet", lambda host: setattr(host.sd_unet, "current_unet", object())),
]


@pytest.mark.parametrize("field, setup", BAD_MODELS, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD_MODELS)])
def test_a_model_that_cannot_be_elevated_is_refused_before_the_first_step(env, field, setup):
    setup(env.host)
    p = processing(env)
    env.job.before_process(p, [settings()])
    p.scripts = env.mini.ScriptRunner(env.script, [settings()])
    with pytest.raises(env.job.VideoElevatorError) as error:
        call_sample(env, p)
    assert str(error.value).startswith(f"VideoElevator: {field}: ")
    assert p.sampler.steps_seen == [] and wrapped_modules(env) == []


def test_and_in_the_hires_prompt_is_refused(env):
    p = processing(env, enable_hr=True, hr_prompt="a boat AND a storm")
    env.job.before_process(p, [settings()])
    with pytest.raises(env.job.VideoElevatorError, match="VideoElevator: (hr_)?prompt: "):
        call_sample(env, p)


def test_a_bad_model_name_lists_the_available_ones(env):
    p = processing(env)
    env.job.before_process(p, [settings(t2v_model="../../etc")])
    with pytest.raises(env.job.VideoElevatorError, match="no T2V model named '../../etc'; available: tiny-zs"):
        p.sample(None, None, [1], [1], 0.0, ["x"])


def test_an_api_job_is_refused_with_http_422(env):
    p = processing(env, is_api=True)
    env.job.before_process(p, [settings(frames=200)])
    with pytest.raises(env.host.fastapi.HTTPException) as error:
        p.sample(None, None, [1], [1], 0.0, ["x"])
    assert error.value.status_code == 422
    assert error.value.detail.startswith("VideoElevator: frames: ")


def test_user_error_builds_the_exception_for_each_caller(env):
    from lib_elevator.settings import SettingsError

    error = SettingsError("fps", "must be between 1 and 60; got 0")
    ui = env.job.user_error(SimpleNamespace(is_api=False), error)
    assert type(ui) is env.job.VideoElevatorError and str(ui) == "VideoElevator: fps: must be between 1 and 60; got 0"
    api = env.job.user_error(SimpleNamespace(is_api=True), error)
    assert isinstance(api, env.host.fastapi.HTTPException)
    assert (api.status_code, api.detail) == (422, "VideoElevator: fps: must be between 1 and 60; got 0")
    assert isinstance(env.job.user_error(SimpleNamespace(), error), env.job.VideoElevatorError)


# ------------------------------------------------------------------------------ sampling hooks


def prepared(env, **fields):
    p = processing(env, **fields)
    env.job.before_process(p, [settings(noise_mix=0.75)])
    p.sampler, p.seeds = env.mini.create_sampler(p.sampler_name), [123 + k for k in range(FRAMES)]
    p.prompts, p.negative_prompts = [p.prompt] * FRAMES, [p.negative_prompt] * FRAMES
    return p


def test_before_every_sampling_mixes_the_noise_in_place_patches_and_wraps(env):
    from host_stub import samplers

    from lib_elevator.noise import TorchNoise

    p = prepared(env)
    x = p.latent_noise(p.seeds)
    own = x.clone()
    env.job.process_before_every_sampling(p, x)
    base = TorchNoise(123).randn((1, *x.shape[1:]))
    scale = 1 / (1 + 0.75**2) ** 0.5
    assert torch.allclose(x, base * 0.75 * scale + own * scale, rtol=0, atol=1e-6)
    assert len(wrapped_modules(env)) == 2
    assert p.sampler.func.__wrapped__ is samplers.sample_euler
    job = env.job.job_of(p)
    assert job.hook_error is None
    # the T2V model was loaded and its prompts encoded before the sampler starts
    assert [model["name"] for model in env.loaded] == ["tiny-zs"] and job.t2v_prompts is not None
    assert job.refine_plan is None  # planning waits for the sampler's schedule
    # a host calling the hook again for the same sampler (Forge's hires pass does) changes nothing
    mixed, wrapped = x.clone(), p.sampler.func
    env.job.process_before_every_sampling(p, x)
    assert p.sampler.func is wrapped and torch.equal(x, mixed) and len(env.loaded) == 1
    assert len(wrapped_modules(env)) == 2  # patched again, not twice


def test_the_hires_pass_gets_attention_but_no_refinement(env):
    from host_stub import samplers

    p = prepared(env, is_hr_pass=True)
    x = torch.randn(FRAMES, 4, 16, 16)
    own = x.clone()
    env.job.process_before_every_sampling(p, x)
    assert torch.equal(x, own) and p.sampler.func is samplers.sample_euler
    assert len(wrapped_modules(env)) == 2


def call_sample(env, p):
    """What process_images does for one batch: the conds, then p.sample."""
    sd_model = env.host.shared.sd_model
    p.prompts, p.negative_prompts = [p.prompt] * p.batch_size, [p.negative_prompt] * p.batch_size
    p.seeds = [p.seed + k for k in range(p.batch_size)]
    c, uc = sd_model.get_learned_conditioning(p.prompts), sd_model.get_learned_conditioning(p.negative_prompts)
    return p.sample(c, uc, p.seeds, p.seeds, 0.0, p.prompts)


def test_a_hook_failure_is_kept_and_raised_from_p_sample(env):
    p = processing(env)
    env.job.before_process(p, [settings()])
    p.scripts = env.mini.ScriptRunner(env.script, [settings()])
    p.batch_size = 2  # something changed the batch after before_process: the hook cannot refine it
    with pytest.raises(env.job.VideoElevatorError, match="VideoElevator: the batch has 2 latents, expected 4 frames"):
        call_sample(env, p)
    assert p.scripts.errors == []  # the adapter kept the error itself; the host would only have logged it
    assert p.sampler.func.__wrapped__ is env.mini.samplers.sample_euler  # replaced by one that raises
    assert p.sampler.steps_seen == []  # ... before the first step
    assert wrapped_modules(env) == []


@pytest.mark.parametrize("is_api", [False, True])
def test_a_t2v_model_that_cannot_load_stops_the_job_before_its_first_step(env, monkeypatch, is_api):
    """Loading happens before the sampler starts; when it fails the host does not sample the whole
    job first, and the user gets the loader's message (HTTP 422 in the API), not a traceback."""
    from lib_elevator.errors import ModelError

    def broken(model):
        raise ModelError("/models/VideoElevator/tiny-zs/unet: the UNet weights lack 3 tensors")

    monkeypatch.setattr(env.models, "get_t2v", broken)
    p = processing(env, is_api=is_api)
    expected = env.host.fastapi.HTTPException if is_api else env.job.VideoElevatorError
    with pytest.raises(expected) as error:
        env.mini.process_images(p, env.script, [settings()])
    text = error.value.detail if is_api else str(error.value)
    assert text == "VideoElevator: /models/VideoElevator/tiny-zs/unet: the UNet weights lack 3 tensors"
    assert p.sampler.steps_seen == [] and env.host.shared.sd_model.calls == []
    assert wrapped_modules(env) == []


@pytest.mark.parametrize("outcome", ["error", "interrupt", "success"])
def test_no_wrapper_is_left_after_p_sample(env, monkeypatch, outcome):
    """job.wrap_sample: whatever p.sample does, every attention wrapper is gone afterwards."""
    real_sample = env.mini.Sampler.sample
    seen = {}

    def sample(self, p, x, *args, **kwargs):
        seen["patched during sampling"] = len(wrapped_modules(env))
        if outcome == "error":
            raise RuntimeError("CUDA out of memory")
        if outcome == "interrupt":
            raise env.host.sd_samplers_common.InterruptedException
        return real_sample(self, p, x, *args, **kwargs)

    monkeypatch.setattr(env.mini.Sampler, "sample", sample)
    p = processing(env)
    gc_before = env.host.devices.gc_calls
    expected = {"error": RuntimeError, "interrupt": env.host.sd_samplers_common.InterruptedException}.get(outcome)
    if expected is None:
        processed = env.mini.process_images(p, env.script, [settings()])
        assert len([image for image in processed.images if not isinstance(image, str)]) == FRAMES
    else:
        with pytest.raises(expected):
            env.mini.process_images(p, env.script, [settings()])
    assert seen["patched during sampling"] == 2
    assert wrapped_modules(env) == []
    job = env.job.job_of(p)
    assert job.cross_frames == [] and job.captured_cfg is None and job.captured_cond == []
    assert env.host.devices.gc_calls > gc_before


def test_a_sampler_that_never_calls_its_func_is_reported(env, monkeypatch):
    monkeypatch.setattr(env.mini.Sampler, "sample", lambda self, p, x, *a, **k: x)
    with pytest.raises(env.job.VideoElevatorError, match="could not attach to the sampler"):
        env.mini.process_images(processing(env), env.script, [settings()])
    assert wrapped_modules(env) == []
    # ... unless the user interrupted or skipped before the sampler started
    for flag in ("interrupted", "skipped"):
        p = processing(env)
        env.job.before_process(p, [settings()])
        p.scripts = env.mini.ScriptRunner(env.script, [settings()])
        setattr(env.host.shared.state, flag, True)
        assert call_sample(env, p).shape[0] == FRAMES
        setattr(env.host.shared.state, flag, False)


@pytest.mark.parametrize("is_api", [False, True])
def test_settings_that_do_not_fit_the_schedule_are_refused_when_planning(env, is_api):
    p = processing(env, is_api=is_api)
    expected = env.host.fastapi.HTTPException if is_api else env.job.VideoElevatorError
    with pytest.raises(expected) as error:
        env.mini.process_images(p, env.script, [settings(refine_points="70%", t2v_steps=30)])
    text = error.value.detail if is_api else str(error.value)
    assert text.startswith("VideoElevator: t2v_steps: 30 T2V steps do not fit")
    assert wrapped_modules(env) == []


def test_a_window_longer_than_the_motion_module_takes_is_refused(env, monkeypatch):
    monkeypatch.setattr(env.models, "get_t2v", lambda model: env.mini.FakeT2V(max_frames=2))
    with pytest.raises(env.job.VideoElevatorError, match="frames: fake-t2v takes at most 2 frames at once"):
        env.mini.process_images(processing(env), env.script, [settings()])
    with pytest.raises(env.job.VideoElevatorError, match="t2v_window: fake-t2v takes at most 2 frames at once"):
        env.mini.process_images(processing(env), env.script, [settings(t2v_window=3, t2v_overlap=1)])


def test_more_frames_than_the_motion_module_takes_run_in_windows(env, monkeypatch):
    fake = env.mini.FakeT2V(max_frames=2)
    monkeypatch.setattr(env.models, "get_t2v", lambda model: fake)
    processed = env.mini.process_images(processing(env), env.script, [settings(t2v_window=2, t2v_overlap=1)])
    assert len([image for image in processed.images if not isinstance(image, str)]) == FRAMES
    assert fake.calls and {call["shape"][2] for call in fake.calls} == {2}  # every call saw one window


# ------------------------------------------------------------------------------ whole jobs


@pytest.mark.parametrize("sampler, anchor", [("Euler", "first"), ("DDIM", "first_prev")])
def test_frames_in_chunks_give_the_same_job(env, sampler, anchor):
    """frame_chunk: every UNet call (the host's, the inversion's, PnP's) runs 1 frame per group at a time,
    sharing the anchor's tokens, with the same frames as one call over all of them; nothing is left on
    the UNet afterwards."""
    unet = env.host.shared.sd_model.model.diffusion_model
    seen = []
    hook = unet.self_attention()[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    try:
        whole, chunked = (
            env.mini.process_images(processing(env, sampler_name=sampler), env.script,
                                    [settings(frame_chunk=chunk, anchor=anchor)]).images
            for chunk in (0, 1)
        )
    finally:
        hook.remove()
    assert max(seen) == 2 * FRAMES and min(seen) == 1  # whole: both groups at once; chunked: a frame per group
    assert len(whole) == len(chunked) and all(torch.allclose(a, b, atol=1e-5) for a, b in zip(whole, chunked) if not isinstance(a, str))
    assert wrapped_modules(env) == [] and "forward" not in unet.__dict__


def plain_run(env, **fields):
    return env.mini.process_images(processing(env, batch_size=FRAMES, **fields))


@pytest.mark.parametrize(
    "sampler, batch_cond_uncond, pnp",
    [("Euler", True, True), ("Euler", False, True), ("Euler a", True, False), ("DDIM", True, True)],
)
def test_a_whole_job(env, sampler, batch_cond_uncond, pnp):
    """Two videos through the script's hooks, for each sampler family and CFG batching mode."""
    host = env.host
    host.shared.opts.data["batch_cond_uncond"] = batch_cond_uncond
    p = processing(env, sampler_name=sampler, n_iter=2, prompt="(a lighthouse:1.3) in [a storm]")
    processed = env.mini.process_images(p, env.script, [settings(pnp=pnp)])
    assert p.scripts.errors == []
    frames = [image for image in processed.images if not isinstance(image, str)]
    gifs = [image for image in processed.images if isinstance(image, str)]
    assert len(frames) == 2 * FRAMES and len(gifs) == 2 and all(g.endswith(".gif") for g in gifs)
    job = env.job.job_of(p)
    plan = job.refine_plan
    steps = job.host_schedule.steps
    # the sampler's own steps, consecutive, and progress that adds up (PnP reuses the host's cond call)
    assert p.sampler.steps_seen == list(range(steps))
    state = host.shared.state
    assert state.sampling_step == state.sampling_steps - 1 and state.sampling_steps > steps
    # T2V work: the planned calls, prompts without weights, no second load
    assert len(plan.refine_at) == 2 and len(env.t2v.calls) == 2 * 2 * 2  # refines x steps x batches
    assert env.t2v.prompts[0] == ("a lighthouse in a storm", "blurry")
    assert [model["name"] for model in env.loaded] == ["tiny-zs", "tiny-zs"]  # resolved once per batch
    # every UNet call of the job ran with cross-frame attention, on whole groups of frames
    unet_calls = host.shared.sd_model.calls
    assert unet_calls and all(all(call["patched"]) and call["rows"] % FRAMES == 0 for call in unet_calls)
    assert wrapped_modules(env) == []
    # refinement changed the frames, and a second identical job gives identical frames
    plain = plain_run(env, sampler_name=sampler).images
    assert not torch.equal(torch.stack(frames[:FRAMES]), torch.stack(plain))
    again = env.mini.process_images(
        processing(env, sampler_name=sampler, n_iter=2, prompt="(a lighthouse:1.3) in [a storm]"),
        env.script,
        [settings(pnp=pnp)],
    )
    assert torch.equal(torch.stack(frames), torch.stack([i for i in again.images if not isinstance(i, str)]))


@pytest.mark.parametrize("inversion_prompt", ["empty", "negative"])
def test_the_adapter_s_own_unet_calls_use_the_right_prompts(env, inversion_prompt):
    """Inversion calls are conditioned on the empty (or negative) prompt, PnP calls on the prompt;
    each is one call of F rows through sd_model.apply_model, with the frames' image conditioning."""
    sd_model = env.host.shared.sd_model
    p = processing(env)
    env.mini.process_images(p, env.script, [settings(inversion_prompt=inversion_prompt)])
    conds = {
        name: sd_model.get_learned_conditioning([text]).expand(FRAMES, -1, -1)
        for name, text in (("prompt", p.prompt), ("negative", p.negative_prompt), ("empty", ""))
    }
    assert len({tuple(c[0].flatten().tolist()) for c in conds.values()}) == 3  # distinguishable
    own = [call for call in sd_model.calls if call["rows"] == FRAMES]
    used = []
    for call in own:
        text = call["cond"]["c_crossattn"][0]
        used.append(next(name for name, cond in conds.items() if torch.equal(text, cond)))
        assert torch.equal(call["cond"]["c_concat"][0], torch.zeros(FRAMES, 5, 1, 1))
    plan = env.job.job_of(p).refine_plan
    assert used.count(inversion_prompt) == plan.inversion_calls()
    assert used.count("prompt") == plan.pnp_calls() > 0
    assert len(used) == plan.inversion_calls() + plan.pnp_calls()


def test_an_interrupt_during_t2v_work_stops_the_job_cleanly(env):
    state = env.host.shared.state
    env.t2v.on_call = lambda count: state.interrupt()
    p = processing(env, n_iter=2)
    processed = env.mini.process_images(p, env.script, [settings()])
    assert p.scripts.errors == []
    assert len(env.t2v.calls) == 1  # the next T2V step saw the interrupt
    assert len([i for i in processed.images if not isinstance(i, str)]) == FRAMES  # the batch loop stopped
    assert wrapped_modules(env) == []
    assert state.textinfo is None  # our stage text is cleared when the job lets go


@pytest.mark.parametrize(
    "policy, medvram, expected",
    [
        ("always", False, ["cuda:0", "cpu", "cuda:0", "cpu", "cpu"]),
        ("auto", True, ["cuda:0", "cpu", "cuda:0", "cpu", "cpu"]),
        ("auto", False, []),
        ("never", True, []),
    ],
)
def test_offloading_moves_the_t2v_model_to_the_device_and_back(env, policy, medvram, expected):
    """With offloading, the T2V model visits the device for each refine and ends the job on the CPU."""
    host = env.host
    host.devices.device = torch.device("cuda", 0)  # where the model would go; the fake computes on CPU
    host.shared.opts.data["videoelevator_offload"] = policy
    host.shared.cmd_opts.medvram = medvram
    env.mini.process_images(processing(env), env.script, [settings()])
    assert env.t2v.moves == expected


def test_cfg_callbacks_are_gated_by_job(env):
    mine, other = processing(env), processing(env)
    env.job.before_process(mine, [settings()])
    job = env.job.job_of(mine)
    params = SimpleNamespace(x=torch.zeros(2 * FRAMES, 1), denoiser=SimpleNamespace(p=other))
    env.job.on_cfg_denoiser(params)
    env.job.on_cfg_denoised(SimpleNamespace(x=torch.ones(2 * FRAMES, 1)))
    assert job.captured_cfg is None and job.captured_cond == []
    params = SimpleNamespace(x=torch.arange(2.0 * FRAMES).reshape(-1, 1), denoiser=SimpleNamespace(p=mine))
    env.job.on_cfg_denoiser(params)
    env.job.on_cfg_denoised(SimpleNamespace(x=-params.x))
    assert job.captured_cfg is params
    ((x_in, out, k_form),) = job.captured_cond
    assert torch.equal(x_in, params.x[:FRAMES]) and torch.equal(out, -params.x[:FRAMES]) and not k_form
    env.job.on_cfg_denoised(SimpleNamespace(x=params.x))  # a denoised call without its denoiser call
    assert len(job.captured_cond) == 1


class Placement:
    """Records where a module is moved."""

    def __init__(self):
        self.moves = []

    def to(self, device):
        self.moves.append(str(device))
        return self


def test_room_for_the_t2v_model_moves_the_host_model_off_and_back(env, monkeypatch):
    host = env.host
    unet, text = Placement(), Placement()
    monkeypatch.setattr(host.shared, "sd_model", SimpleNamespace(model=unet, cond_stage_model=text, lowvram=False))
    host_adapter = env.host.adapter("hosts").current()
    with host_adapter.make_room(None, (2, 4, 8, 8)):
        assert unet.moves == ["cpu"] and text.moves == ["cpu"]
    assert unet.moves == ["cpu", str(host.devices.device)] and text.moves[-1] == str(host.devices.device)
    with pytest.raises(RuntimeError), host_adapter.make_room(None, (2, 4, 8, 8)):
        raise RuntimeError("T2V failed")
    assert unet.moves[-1] == str(host.devices.device)  # put back whatever happens


def test_lowvram_evicts_the_host_model_instead_of_moving_it(env, monkeypatch):
    host = env.host
    unet = Placement()
    monkeypatch.setattr(host.shared, "sd_model", SimpleNamespace(model=unet, cond_stage_model=None, lowvram=True))
    gc_before = host.devices.gc_calls
    with host.adapter("hosts").current().make_room(None, (2, 4, 8, 8)):
        assert host.lowvram.evictions == 1
    assert unet.moves == [] and host.devices.gc_calls == gc_before + 1


def test_prompts_reach_the_t2v_model_without_attention_syntax(env):
    plain = env.job.plain_text
    assert plain("(a lighthouse:1.3) in [a storm], ((waves))") == "a lighthouse in a storm, waves"
    assert plain(r"a \(literal\) bracket") == "a (literal) bracket"
    assert plain("") == "" and plain(None) == ""


def test_the_script_entry_point(env):
    host, script = env.host, env.script
    assert script.title() == "VideoElevator"
    assert script.show(False) is host.scripts.AlwaysVisible and script.show(True) is False
    callbacks = host.script_callbacks.callbacks
    assert callbacks["cfg_denoiser"] == [env.job.on_cfg_denoiser]
    assert callbacks["cfg_denoised"] == [env.job.on_cfg_denoised]
    assert callbacks["infotext_pasted"] == [env.host.adapter("ui").on_infotext_pasted]
    assert callbacks["ui_settings"] == [env.host.adapter("options").on_ui_settings]
    assert callbacks["app_started"] == [env.host.adapter("api").on_app_started]
    assert callbacks["script_unloaded"] == [env.models.unload]
    assert [elem for elem, _ in script.on_after_component_elem_id] == ["generation_info_txt2img"]


# ------------------------------------------------------------------------------ X/Y/Z plot axes


class XYZStandIn:
    """The host's scripts/xyz_grid.py as far as axes go: `AxisOption` and `axis_options`."""

    class AxisOption:
        def __init__(self, label, type, apply, format_value=None, confirm=None, cost=0.0, choices=None):
            self.label, self.type, self.apply, self.confirm, self.choices = label, type, apply, confirm, choices

    def __init__(self):
        self.axis_options = [self.AxisOption("Seed", int, None)]


def xyz_registered(env, monkeypatch):
    from types import SimpleNamespace

    xyz_grid = XYZStandIn()
    entry = SimpleNamespace(script_class=type("Script", (), {"__module__": "xyz_grid.py"}), module=xyz_grid)
    monkeypatch.setattr(env.host.scripts, "scripts_data", [entry])
    xyz = env.host.adapter("xyz")
    assert xyz.register() and xyz.register()  # a second registration adds nothing
    return xyz_grid, {option.label: option for option in xyz_grid.axis_options}


def test_the_axes_are_registered_once_and_checked_like_the_accordion(env, monkeypatch):
    xyz_grid, axes = xyz_registered(env, monkeypatch)
    names = env.host.adapter("xyz").AXES
    assert len(xyz_grid.axis_options) == 1 + len(names) and len(axes) == 1 + len(names)
    frames, enabled, model = axes["[VideoElevator] Frames"], axes["[VideoElevator] Enabled"], axes["[VideoElevator] T2V model"]
    assert frames.type is int and enabled.choices() == ["True", "False"] and model.choices() == ["tiny-zs"]
    from types import SimpleNamespace

    ui, api = SimpleNamespace(is_api=False), SimpleNamespace(is_api=True)
    frames.confirm(ui, [4, 8])
    axes["[VideoElevator] T2V window (0 = model's length)"].confirm(ui, [2, 3])  # fine with the cell's overlap
    with pytest.raises(env.job.VideoElevatorError, match="VideoElevator: frames: must be a whole number"):
        frames.confirm(ui, [4, 4.5])
    with pytest.raises(env.job.VideoElevatorError, match="VideoElevator: frames: a video needs between 2 and 128"):
        frames.confirm(ui, [4, 200])
    with pytest.raises(env.host.fastapi.HTTPException) as refused:  # the API answers 422
        axes["[VideoElevator] Anchor"].confirm(api, ["first", "last"])
    assert refused.value.status_code == 422 and "anchor: must be one of first, first_prev" in refused.value.detail


def test_every_cell_is_a_video_listed_in_the_plot_info(env, monkeypatch):
    """Two cells as the plot runs them: shallow copies of one p (so one extra_generation_params), each
    with its axis value; the grid's info lists both cells' videos, and the second cell's infotext does
    not carry the first cell's video list."""
    import copy

    _, axes = xyz_registered(env, monkeypatch)
    p = processing(env)
    results = []
    for frames in (2, 3):
        cell = copy.copy(p)
        axes["[VideoElevator] Frames"].apply(cell, frames, [2, 3])
        results.append(env.mini.process_images(cell, env.script, [settings()]))
        assert len([i for i in results[-1].images if not isinstance(i, str)]) == frames
    assert not getattr(p, env.host.adapter("xyz").ATTR, None)  # the cells' values stay on the cells
    videos = results[-1].extra_generation_params["videoelevator"]["videos"]
    assert sorted(v["format"] for v in videos) == ["GIF", "GIF", "PNG", "PNG"]  # both cells' videos
    assert len({v["path"] for v in videos}) == 4
    # the host builds later infotexts from the same dict: a callable value that returns None is left out
    report = results[-1].extra_generation_params["videoelevator"]
    assert callable(report) and report() is None and json.loads(json.dumps(report))["videos"] == videos
