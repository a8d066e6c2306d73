"""The extension inside a real AUTOMATIC1111 WebUI (v1.10.1), through its HTTP API.

Runs only where a host is configured: set VIDEOELEVATOR_WEBUI_URL (e.g. http://127.0.0.1:7861) to
a WebUI started with this extension installed, the tiny random-weight SD1 checkpoint loaded and a
tiny ZeroScope model in models/VideoElevator; docs/webui-testing.md says how (a few minutes, no
downloads). Without it every test here is skipped with that reason.
"""

import base64
import contextlib
import io
import json
import os
import tempfile
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

URL = os.environ.get("VIDEOELEVATOR_WEBUI_URL", "").rstrip("/")
# Sampling steps of most jobs: 12 in A1111 with the tiny checkpoint; fewer in Forge, whose full-size
# checkpoint takes seconds a step on a CPU (tools/webui_host_test.sh sets it per host).
STEPS = int(os.environ.get("VIDEOELEVATOR_HOST_STEPS", "12"))
pytestmark = pytest.mark.skipif(not URL, reason="no WebUI host configured (set VIDEOELEVATOR_WEBUI_URL; "
                                                "see docs/webui-testing.md)")


def request(path, payload=None, timeout=900):
    data = json.dumps(payload).encode() if payload is not None else None
    req = urllib.request.Request(URL + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def job(seed=123, sampler="Euler", steps=STEPS, ve=None, **fields):
    payload = dict(prompt="a lighthouse in a storm", negative_prompt="blurry", steps=steps, cfg_scale=7.5,
                   width=64, height=64, seed=seed, sampler_name=sampler, batch_size=1, n_iter=1)
    payload.update(fields)
    if ve is not None:
        payload["alwayson_scripts"] = {"VideoElevator": {"args": [ve]}}
    return payload


def frames_of(body):
    return [np.array(Image.open(io.BytesIO(base64.b64decode(image))).convert("RGB")) for image in body["images"]]


def videos_of(body):
    return json.loads(body["info"])["extra_generation_params"]["videoelevator"]["videos"]


@pytest.fixture(scope="module")
def host():
    """The host family as the extension detected it ("AUTOMATIC1111" or "Forge")."""
    status, body = request("/videoelevator/v1/models")
    assert status == 200 and body["host"]["unsupported"] is None, body
    return body["host"]["family"]


@pytest.fixture(scope="module")
def t2v_name():
    status, body = request("/videoelevator/v1/models")
    assert status == 200
    names = [m["name"] for m in body["models"] if m["kind"] == "zeroscope"]
    if not names:
        pytest.skip(f"no ZeroScope model in {body['model_folder']} (docs/webui-testing.md)")
    return names[0]


# a refine needs one more step after it: 75% of a 4-step schedule is step 3 of 0..3, refused
REFINE_POINTS = "25%,50%,75%" if STEPS >= 8 else "25%,50%"


def elevated(t2v_name, **settings):
    return {"enable": True, "t2v_model": t2v_name, "frames": 4, "refine_points": REFINE_POINTS, "t2v_steps": 3,
            "formats": ["MP4", "GIF"], **settings}


def test_models_route_lists_kinds(t2v_name):
    status, body = request("/videoelevator/v1/models")
    assert status == 200
    assert {"name": t2v_name, "kind": "zeroscope", "folder": "VideoElevator"} in body["models"]


def test_enabled_call_returns_frames_and_a_playable_video(t2v_name):
    from lib_elevator.video_io import read_mp4_frame_count

    status, body = request("/sdapi/v1/txt2img", job(ve=elevated(t2v_name)))
    assert status == 200, body
    frames = frames_of(body)
    assert len(frames) == 4 and all(f.shape == (64, 64, 3) for f in frames)
    videos = {v["format"]: v for v in videos_of(body)}
    assert set(videos) == {"MP4", "GIF"} and os.path.exists(videos["MP4"]["path"])
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "v.mp4")
        with open(path, "wb") as f:
            f.write(base64.b64decode(videos["MP4"]["base64"]))
        assert read_mp4_frame_count(path) == 4
    gif = Image.open(io.BytesIO(base64.b64decode(videos["GIF"]["base64"])))
    assert gif.n_frames == 4
    info = json.loads(body["info"])
    assert '"frames":4' in info["infotexts"][0].replace("\\", "")


def test_same_call_twice_gives_identical_frames(t2v_name):
    first = frames_of(request("/sdapi/v1/txt2img", job(ve=elevated(t2v_name)))[1])
    second = frames_of(request("/sdapi/v1/txt2img", job(ve=elevated(t2v_name)))[1])
    assert all((a == b).all() for a, b in zip(first, second))


def test_plain_calls_are_untouched_by_enabled_and_interrupted_jobs(t2v_name):
    plain = job(seed=7, batch_size=2)
    before = frames_of(request("/sdapi/v1/txt2img", plain)[1])
    assert request("/sdapi/v1/txt2img", job(ve=elevated(t2v_name)))[0] == 200

    result = {}
    worker = threading.Thread(target=lambda: result.update(
        zip(("status", "body"), request("/sdapi/v1/txt2img", job(steps=40, ve=elevated(t2v_name, frames=6)))))
    )
    worker.start()
    time.sleep(3)
    request("/sdapi/v1/interrupt", {})
    worker.join()
    assert result["status"] == 200 and len(frames_of(result["body"])) == 6  # what was done is kept

    after = frames_of(request("/sdapi/v1/txt2img", plain)[1])
    assert all((a == b).all() for a, b in zip(before, after))


@pytest.mark.parametrize("ve, field", [
    ({"enable": True, "frames": 4, "bogus": 1}, "bogus"),
    ({"enable": True, "frames": 1}, "frames"),
    ({"enable": True, "frames": "many"}, "frames"),
    ({"enable": True, "t2v_model": "../../Stable-diffusion/tiny-sd1.safetensors"}, "t2v_model"),
    ({"enable": True, "refine_points": "150%"}, "refine_points"),
    ({"enable": True, "formats": ["AVI"]}, "formats"),
])
def test_bad_arguments_are_refused_with_a_4xx_naming_the_field(t2v_name, ve, field):
    settings = {"t2v_model": t2v_name, **ve}
    status, body = request("/sdapi/v1/txt2img", job(ve=settings))
    assert status == 422 and body["field"] == field and field in body["detail"]


def test_t2v_steps_that_do_not_fit_the_schedule_are_refused_before_sampling(t2v_name):
    # at 50 % the noise level is about timestep 500: room for 25 T2V steps of 20, not 30
    ve = elevated(t2v_name, refine_points="50%", t2v_steps=30)
    status, body = request("/sdapi/v1/txt2img", job(sampler="DPM++ 2M", ve=ve))
    assert status == 422 and "t2v_steps" in body["detail"] and "do not fit" in body["detail"]


def test_unsupported_sampler_is_refused(t2v_name):
    status, body = request("/sdapi/v1/txt2img", job(sampler="UniPC", ve=elevated(t2v_name)))
    assert status == 422 and body["field"] == "sampler_name"


def test_args_may_be_a_single_dict(t2v_name):
    payload = job()
    payload["alwayson_scripts"] = {"videoelevator": {"args": elevated(t2v_name, formats=["GIF"])}}
    status, body = request("/sdapi/v1/txt2img", payload)
    assert status == 200 and len(frames_of(body)) == 4


FORGE_SAMPLERS = ["DDPM", "DEIS", "IPNDM", "IPNDM_V", "HeunPP2"]  # samplers only Forge has


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M", "Heun", "DDIM", "PLMS", "LCM", *FORGE_SAMPLERS])
def test_samplers(t2v_name, host, sampler):
    if sampler in FORGE_SAMPLERS and host != "Forge":
        pytest.skip(f"{sampler} is a Forge sampler")
    ve = elevated(t2v_name, formats=["GIF"])
    status, body = request("/sdapi/v1/txt2img", job(sampler=sampler, ve=ve))
    assert status == 200, body
    assert len(frames_of(body)) == 4 and videos_of(body)


def test_a_40_frame_video_in_t2v_windows_and_frame_chunks(t2v_name):
    """More frames than the host's Batch size slider offers and than the T2V model's clips: the T2V model
    refines 16-frame windows, the host's UNet runs 8 frames at a time; a plain job afterwards is unchanged."""
    from lib_elevator.video_io import read_mp4_frame_count

    plain = job(seed=9, batch_size=2)
    before = frames_of(request("/sdapi/v1/txt2img", plain)[1])
    ve = elevated(t2v_name, frames=40, t2v_window=16, t2v_overlap=4, frame_chunk=8, formats=["MP4"])
    status, body = request("/sdapi/v1/txt2img", job(ve=ve))
    assert status == 200, body
    assert len(frames_of(body)) == 40
    [video] = videos_of(body)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "v.mp4")
        with open(path, "wb") as f:
            f.write(base64.b64decode(video["base64"]))
        assert read_mp4_frame_count(path) == 40
    after = frames_of(request("/sdapi/v1/txt2img", plain)[1])
    assert all((a == b).all() for a, b in zip(before, after))


@pytest.mark.parametrize("kind", ["animatediff", "animatelcm"])
def test_motion_modules_plug_into_the_loaded_checkpoint(kind):
    models = request("/videoelevator/v1/models")[1]["models"]
    names = [m["name"] for m in models if m["kind"] == kind]
    if not names:
        pytest.skip(f"no {kind} model in the model folder (tools/webui_host_test.sh writes one)")
    status, body = request("/sdapi/v1/txt2img", job(sampler="Euler a", ve=elevated(names[0], formats=["GIF"])))
    assert status == 200, body
    assert len(frames_of(body)) == 4 and videos_of(body)[0]["format"] == "GIF"


@pytest.mark.parametrize("anchor", ["first", "first_prev"])
def test_hires_fix_upscales_every_frame(t2v_name, host, anchor):
    """Forge runs process_before_every_sampling twice in the hires pass (each time on a fresh clone of
    its UNet patcher); the job must neither fail nor wrap anything twice, and stays deterministic."""
    # Forge's API needs these two for hires fix (its hr_cfg default 1.0 drops the uncond rows)
    forge = {"hr_additional_modules": ["Use same choices"], "hr_cfg": 7.5} if host == "Forge" else {}
    payload = job(ve=elevated(t2v_name, formats=["GIF"], anchor=anchor), enable_hr=True, hr_scale=1.5,
                  hr_upscaler="Latent", denoising_strength=0.5, hr_second_pass_steps=2, **forge)
    status, body = request("/sdapi/v1/txt2img", payload)
    assert status == 200, body
    frames = frames_of(body)
    assert len(frames) == 4 and all(f.shape == (96, 96, 3) for f in frames)
    again = frames_of(request("/sdapi/v1/txt2img", payload)[1])
    assert all((a == b).all() for a, b in zip(frames, again))


def test_host_ddim_equals_the_standalone_pipeline(t2v_name):
    from lib_elevator.loaders import load_t2i
    from lib_elevator.noise import WebUIJobNoise
    from lib_elevator.settings import Settings
    from lib_elevator.standalone import Job, generate
    from lib_elevator.t2v.registry import load_t2v

    status, options = request("/sdapi/v1/options")
    checkpoint = next(m for m in request("/sdapi/v1/sd-models")[1] if m["title"] == options["sd_model_checkpoint"])
    t2v_path = os.path.join(os.path.dirname(os.path.dirname(checkpoint["filename"])), "VideoElevator", t2v_name)
    ve = elevated(t2v_name, refine_points="25%,75%", formats=["GIF"])
    status, body = request("/sdapi/v1/txt2img", job(sampler="DDIM", steps=8, seed=11, ve=ve))
    assert status == 200, body
    host_frames = np.stack(frames_of(body))

    t2i = load_t2i(checkpoint["filename"])
    t2v = load_t2v(t2v_path)
    settings = Settings(frames=4, refine_points="25%,75%", t2v_steps=3)
    ours = generate(t2i, t2v, Job("a lighthouse in a storm", "blurry", 64, 64, 8, 7.5, 11, schedule="webui-ddim"),
                    settings, noise=WebUIJobNoise(11))
    diff = np.abs(host_frames.astype(int) - ours.frames.astype(int))
    print(f"host vs standalone, uint8 levels: max {diff.max()}, mean {diff.mean():.3f}")
    # the host truncates to uint8 where we round: at most one level apart (about half the pixels)
    assert diff.max() <= 1 and diff.mean() < 0.6


# ------------------------------------------------------------------------------ token merging (tomesd)


@contextlib.contextmanager
def options_kept(*keys):
    """Puts the host's options `keys` back afterwards. The host's own restore after a job with
    `override_settings` skips every option still at its default (not yet in its config data,
    modules/processing.py `stored_opts`): such an override stays in force for later jobs."""
    status, options = request("/sdapi/v1/options")
    assert status == 200
    try:
        yield
    finally:
        assert request("/sdapi/v1/options", {key: options[key] for key in keys})[0] == 200


def test_token_merging_jobs_run_with_cross_frame_attention(t2v_name):
    """Settings > Optimizations > Token merging ratio: the host applies tomesd for the job (each
    BasicTransformerBlock becomes a ToMeBlock subclass) and removes it afterwards."""
    plain = job(seed=5, batch_size=2)
    ve = elevated(t2v_name, formats=["GIF"])
    before = frames_of(request("/sdapi/v1/txt2img", plain)[1])
    unmerged = frames_of(request("/sdapi/v1/txt2img", job(ve=ve))[1])
    with options_kept("token_merging_ratio"):
        status, merged = request("/sdapi/v1/txt2img", job(ve=ve, override_settings={"token_merging_ratio": 0.5}))
    assert status == 200, merged
    assert len(frames_of(merged)) == 4
    assert "Token merging ratio: 0.5" in json.loads(merged["info"])["infotexts"][0]
    assert any((a != b).any() for a, b in zip(frames_of(merged), unmerged))  # merging did change the frames
    after = frames_of(request("/sdapi/v1/txt2img", plain)[1])
    assert all((a == b).all() for a, b in zip(before, after))
    again = frames_of(request("/sdapi/v1/txt2img", job(ve=ve))[1])
    assert all((a == b).all() for a, b in zip(unmerged, again))


# ------------------------------------------------------------------------------ SDXL


@pytest.fixture(scope="module")
def sdxl():
    """The override that switches a job to the tiny SDXL checkpoint (tools/make_host_sdxl.py), by the
    title the host lists. Live previews are off: for SDXL the host's "Approx NN" preview model would be
    downloaded at the start of every job (SD1's ships with the host). The next job without the override
    loads the options' checkpoint again."""
    titles = [m["title"] for m in request("/sdapi/v1/sd-models")[1] if m["model_name"] == "tiny-sdxl"]
    if not titles:
        pytest.skip("no tiny-sdxl checkpoint in models/Stable-diffusion (tools/webui_host_test.sh writes one)")
    with options_kept("live_previews_enable"):
        yield {"sd_model_checkpoint": titles[0], "live_previews_enable": False}


def test_sdxl_with_an_sd1_vae_video_model_projects_latents(t2v_name, sdxl):
    """SDXL latents pass through pixel space into the ZeroScope (SD1 VAE) space and back, through the
    host's own first-stage encode/decode (also under --medvram/--lowvram: run this with WEBUI_FLAGS)."""
    ve = elevated(t2v_name, formats=["GIF"])
    status, body = request("/sdapi/v1/txt2img", job(ve=ve, override_settings=sdxl))
    assert status == 200, body
    frames = frames_of(body)
    assert len(frames) == 4 and all(f.shape == (64, 64, 3) for f in frames)
    assert "Model: tiny-sdxl" in json.loads(body["info"])["infotexts"][0]
    again = frames_of(request("/sdapi/v1/txt2img", job(ve=ve, override_settings=sdxl))[1])
    assert all((a == b).all() for a, b in zip(frames, again))


def test_sdxl_empty_inversion_prompt_is_the_hosts_empty_negative_prompt(t2v_name, sdxl):
    """With an empty negative prompt, inverting with the "empty" prompt and with the job's negative prompt
    (the host's own uncond rows: SDXL's zeroed text embeddings with this job's size embeddings) must be
    the same conditioning, so the frames are identical."""
    frames = {}
    for which in ("empty", "negative"):
        ve = elevated(t2v_name, formats=["GIF"], inversion_prompt=which)
        status, body = request("/sdapi/v1/txt2img", job(negative_prompt="", width=64, height=96, ve=ve,
                                                        override_settings=sdxl))
        assert status == 200, body
        frames[which] = frames_of(body)
    assert all((a == b).all() for a, b in zip(frames["empty"], frames["negative"]))


def test_both_refine_notations_name_the_same_steps_on_ddim(t2v_name):
    """The host's DDIM with 50 steps makes 49 updates; "10%,30%,50%,70%" and "45,35,25,15" must both
    refine at t = 881/681/481/281 (the percentages used to land one step late). Where steps are slow
    (Forge's full-size checkpoint) the same holds at 20 steps: "18,14,10,6" remaining."""
    steps = 50 if STEPS >= 12 else 20
    remaining = ",".join(str(steps - steps * k // 10) for k in (1, 3, 5, 7))
    frames = []
    for points in ("10%,30%,50%,70%", remaining):
        status, body = request("/sdapi/v1/txt2img", job(sampler="DDIM", steps=steps,
                                                        ve=elevated(t2v_name, refine_points=points, formats=["PNG"])))
        assert status == 200, body
        frames.append(frames_of(body))
    assert all((a == b).all() for a, b in zip(*frames))


def test_a_t2v_model_that_cannot_run_is_listed_apart_and_refused(t2v_name):
    status, body = request("/videoelevator/v1/models")
    path = os.path.join(body["model_folder"], "mm_sd_v15_v2-pickled.ckpt")
    torch.save({"down_blocks.0.motion_modules.0.proj_in.weight": torch.zeros(1)}, path)
    try:
        status, body = request("/videoelevator/v1/models")
        assert "mm_sd_v15_v2-pickled.ckpt" not in [m["name"] for m in body["models"]]
        [entry] = [m for m in body["unusable"] if m["name"] == "mm_sd_v15_v2-pickled.ckpt"]
        assert "pickled weights" in entry["error"]
        status, body = request("/sdapi/v1/txt2img", job(ve=elevated("mm_sd_v15_v2-pickled.ckpt")))
        assert status == 422 and body["field"] == "t2v_model" and "cannot be used" in body["detail"]
    finally:
        os.remove(path)


def test_compat_authors_runs_in_the_host(t2v_name):
    ours = request("/sdapi/v1/txt2img", job(sampler="DDIM", steps=16, ve=elevated(t2v_name, formats=["PNG"])))
    theirs = request("/sdapi/v1/txt2img", job(sampler="DDIM", steps=16,
                                              ve=elevated(t2v_name, formats=["PNG"], compat="authors")))
    assert ours[0] == theirs[0] == 200, theirs
    a, b = frames_of(ours[1]), frames_of(theirs[1])
    assert len(b) == 4 and not all((x == y).all() for x, y in zip(a, b))
    assert '"compat":"authors"' in json.loads(theirs[1]["info"])["infotexts"][0].replace("\\", "")


@contextlib.contextmanager
def pickles_allowed():
    request("/sdapi/v1/options", {"videoelevator_allow_pickle": True})
    try:
        yield
    finally:
        request("/sdapi/v1/options", {"videoelevator_allow_pickle": False})


@pytest.mark.parametrize("kind", ["videocrafter2", "lavie"])
def test_the_seed_video_models_run_through_the_api(kind):
    """VideoCrafter2 (its own text tower) and LaVie (the loaded SD1 checkpoint's text encoder and VAE),
    from the pickles users download: listed as unusable until pickles are allowed, then a job runs."""
    status, body = request("/videoelevator/v1/models")
    unusable = [m["name"] for m in body["unusable"]]
    if not any(kind.replace("2", "") in name for name in unusable + [m["name"] for m in body["models"]]):
        pytest.skip(f"no tiny {kind} model in {body['model_folder']} (tools/webui_host_test.sh builds one)")
    assert any(kind.replace("2", "") in name for name in unusable)  # pickles need the opt-in
    with pickles_allowed():
        status, body = request("/videoelevator/v1/models")
        [name] = [m["name"] for m in body["models"] if m["kind"] == kind]
        ve = elevated(name, refine_points="50%", t2v_steps=2, formats=["PNG"], t2v_fps=24)
        status, body = request("/sdapi/v1/txt2img", job(sampler="Euler", steps=8, ve=ve))
        assert status == 200, body
        assert len(frames_of(body)) == 4


# ------------------------------------------------------------------------------ X/Y/Z plot


def test_an_xyz_plot_over_videoelevator_axes(t2v_name):
    """script_name "x/y/z plot" with the axes Frames (2, 3) x Enabled (True, False): one grid image of the
    cells' first frames, both enabled cells' videos in `info`, each cell's own infotext (the plain cells
    without VideoElevator's), and no cell's infotext carrying the video list."""
    from PIL import Image

    [plot] = [s for s in request("/sdapi/v1/script-info")[1] if s["name"] == "x/y/z plot" and not s["is_img2img"]]
    axes = plot["args"][0]["choices"]
    frames_axis, enabled_axis = axes.index("[VideoElevator] Frames"), axes.index("[VideoElevator] Enabled")
    payload = job(ve=elevated(t2v_name, formats=["GIF"]), script_name="x/y/z plot", script_args=[
        frames_axis, "2,3", [], enabled_axis, "", ["True", "False"], 0, "", [],
        True, False, False, False, False, False, False, 0, False])
    status, body = request("/sdapi/v1/txt2img", payload)
    assert status == 200, body
    [grid] = [Image.open(io.BytesIO(base64.b64decode(image))) for image in body["images"]]
    assert grid.size[0] > 2 * 64 and grid.size[1] > 2 * 64  # 2 x 2 cells of 64 px, with labels
    info = json.loads(body["info"])
    assert [v["format"] for v in videos_of(body)] == ["GIF", "GIF"]
    cells = info["infotexts"][1:]
    plain = [t.replace("\\", "") for t in cells]
    assert sum('"frames":2' in t for t in plain) == 1 and sum('"frames":3' in t for t in plain) == 1
    assert sum("VideoElevator:" in t for t in cells) == 2 and not any("videos" in t for t in info["infotexts"])


def test_a_bad_xyz_axis_value_is_refused_before_any_cell(t2v_name):
    [plot] = [s for s in request("/sdapi/v1/script-info")[1] if s["name"] == "x/y/z plot" and not s["is_img2img"]]
    frames_axis = plot["args"][0]["choices"].index("[VideoElevator] Frames")
    payload = job(ve=elevated(t2v_name, formats=["GIF"]), script_name="x/y/z plot", script_args=[
        frames_axis, "2,200", [], 0, "", [], 0, "", [], True, False, False, False, False, False, False, 0, False])
    status, body = request("/sdapi/v1/txt2img", payload)
    assert status == 422 and "frames: a video needs between 2 and 128 frames; got 200" in body["detail"]
