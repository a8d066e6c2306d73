"""Where T2V models are found and how they are loaded (lib_elevator/webui/models.py), and the API:
the request check in front of /sdapi/v1/txt2img (api.check_request and its ASGI wrapper), the
models route and the route registration (lib_elevator/webui/api.py), inside the stand-in host."""

import asyncio
import json
import os
from types import SimpleNamespace

import host_stub
import pytest
import torch

from lib_elevator.settings import SettingsError


@pytest.fixture
def webui(tmp_path):
    with host_stub.installed(tmp_path) as host:
        yield host


def motion_module(path: str) -> str:
    """A file the registry lists as an AnimateDiff motion module (names only matter)."""
    from safetensors.torch import save_file

    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file({"down_blocks.0.motion_modules.0.proj_in.weight": torch.zeros(1)}, path)
    return path


@pytest.fixture
def folders(webui):
    """Models in the extension's folder, in models/text2video and in both AnimateDiff folders."""
    from host_stub import minihost

    models_path = webui.paths.models_path
    made = SimpleNamespace(
        ours=minihost.zeroscope_layout(os.path.join(models_path, "VideoElevator", "zs")),
        t2v=minihost.zeroscope_layout(os.path.join(models_path, "text2video", "zs")),
        t2v_other=minihost.zeroscope_layout(os.path.join(models_path, "text2video", "modelscope")),
        mm=motion_module(os.path.join(models_path, "AnimateDiff", "mm_sd_v15_v2.safetensors")),
    )
    os.makedirs(os.path.join(models_path, "VideoElevator", "not-a-model"))
    with open(os.path.join(models_path, "VideoElevator", "notes.txt"), "w") as f:
        f.write("not a model")
    return made


# ------------------------------------------------------------------------------ models


def test_the_model_folder_setting_wins_over_the_command_line_and_the_default(webui):
    models = webui.adapter("models")
    assert models.main_folder() == os.path.join(webui.paths.models_path, "VideoElevator")
    webui.shared.cmd_opts.videoelevator_models_dir = "/from/command/line"
    assert models.main_folder() == "/from/command/line"
    webui.shared.opts.data["videoelevator_model_dir"] = "/from/settings"
    assert models.main_folder() == "/from/settings"


def test_only_existing_folders_are_searched_in_order(webui, folders):
    models = webui.adapter("models")
    root = webui.paths.models_path
    assert models.model_folders() == [
        ("VideoElevator", os.path.join(root, "VideoElevator")),
        ("text2video", os.path.join(root, "text2video")),
        ("AnimateDiff", os.path.join(root, "AnimateDiff")),
    ]
    extension_models = os.path.join(webui.paths.extensions_dir, "sd-webui-animatediff", "model")
    os.makedirs(extension_models)
    assert models.model_folders()[-1] == ("AnimateDiff", extension_models)


def test_models_are_listed_with_unique_names_and_their_folder(webui, folders):
    models = webui.adapter("models")
    listed = {m["name"]: m for m in models.list_models()}
    assert set(listed) == {"zs", "text2video/zs", "modelscope", "mm_sd_v15_v2.safetensors"}
    assert listed["zs"]["path"] == folders.ours and listed["zs"]["folder"] == "VideoElevator"
    assert listed["text2video/zs"]["path"] == folders.t2v and listed["text2video/zs"]["folder"] == "text2video"
    assert listed["mm_sd_v15_v2.safetensors"]["kind"] == "animatediff"
    assert {m["kind"] for m in listed.values()} == {"zeroscope", "animatediff"}
    assert models.model_names()[0] == "zs"


def test_the_same_file_in_three_folders_gets_three_names(webui):
    name = "mm_sd_v15_v3.safetensors"
    paths = [
        motion_module(os.path.join(folder, name))
        for folder in (
            os.path.join(webui.paths.models_path, "VideoElevator"),
            os.path.join(webui.paths.models_path, "AnimateDiff"),
            os.path.join(webui.paths.extensions_dir, "sd-webui-animatediff", "model"),
        )
    ]
    models = webui.adapter("models")
    names = models.model_names()
    assert len(names) == 3 and len(set(names)) == 3
    assert sorted(models.resolve(n)["path"] for n in names) == sorted(paths)


def test_only_listed_names_resolve(webui, folders):
    models = webui.adapter("models")
    assert models.resolve("text2video/zs")["path"] == folders.t2v
    for name in (folders.t2v, "../text2video/zs", "/etc/passwd", "ZS", "notes.txt", "not-a-model"):
        with pytest.raises(SettingsError) as error:
            models.resolve(name)
        assert (
            error.value.field == "t2v_model"
            and "available: zs, modelscope, text2video/zs, mm_sd_v15_v2.safetensors" in str(error.value)
        )
    with pytest.raises(SettingsError, match="t2v_model: choose a T2V model; put one in"):
        models.resolve("")


def test_no_models_says_where_to_put_them(webui):
    models = webui.adapter("models")
    with pytest.raises(SettingsError, match=r"available: none \(put models in .*VideoElevator\)"):
        models.resolve("zs")


@pytest.mark.parametrize(
    "policy, flags, sdxl, expected",
    [
        ("auto", {}, False, False),
        ("auto", {"medvram": True}, False, True),
        ("auto", {"lowvram": True}, False, True),
        ("auto", {"medvram_sdxl": True}, False, False),
        ("auto", {"medvram_sdxl": True}, True, True),
        ("always", {}, False, True),
        ("never", {"lowvram": True}, False, False),
    ],
)
def test_offload_policy(webui, policy, flags, sdxl, expected):
    webui.shared.opts.data["videoelevator_offload"] = policy
    for key, value in flags.items():
        setattr(webui.shared.cmd_opts, key, value)
    webui.shared.sd_model = SimpleNamespace(is_sdxl=sdxl)
    assert webui.adapter("models").offload_wanted() is expected


class Loaded:
    supports_forward_chunking, fps = False, None

    def __init__(self, path, base, device, dtype):
        self.path, self.base, self.device, self.dtype = path, base, device, dtype
        self.moves = []

    def to(self, device):
        self.moves.append(device)
        self.device = device
        return self


def test_t2v_models_are_loaded_once_and_one_at_a_time(webui, folders, monkeypatch):
    models = webui.adapter("models")
    loads, pickles = [], []

    def load_t2v(path, base=None, device="cpu", dtype=torch.float32, allow_pickle=False):
        loads.append(path)
        pickles.append(allow_pickle)
        return Loaded(path, base, device, dtype)

    monkeypatch.setattr(models, "load_t2v", load_t2v)
    webui.devices.device = "cuda:0"
    first = models.get_t2v(models.resolve("zs"))
    assert models.get_t2v(models.resolve("zs")) is first and loads == [folders.ours]
    assert (first.device, first.dtype, first.base) == ("cuda:0", webui.devices.dtype, None)
    other = models.get_t2v(models.resolve("modelscope"))
    assert other is not first and loads == [folders.ours, folders.t2v_other]
    assert models.get_t2v(models.resolve("zs")) is not first  # the cache holds one model
    # offloading: loaded on the CPU; a cached model on the wrong device is moved, not reloaded
    webui.shared.opts.data["videoelevator_offload"] = "always"
    cached = models.get_t2v(models.resolve("zs"))
    assert cached.device == "cpu" and cached.moves == ["cpu"] and len(loads) == 3
    gc = webui.devices.gc_calls
    models.unload()
    assert webui.devices.gc_calls == gc + 1
    models.get_t2v(models.resolve("zs"))
    assert len(loads) == 4
    # pickled weights are read only when Settings > VideoElevator says so
    webui.shared.opts.data["videoelevator_allow_pickle"] = True
    models.unload()
    models.get_t2v(models.resolve("zs"))
    assert pickles == [False] * 4 + [True]


def test_motion_modules_plug_into_the_loaded_sd1_checkpoint(webui, folders, monkeypatch, tmp_path):
    import lib_elevator.loaders

    models = webui.adapter("models")
    bases, loads = [], []
    monkeypatch.setattr(
        lib_elevator.loaders,
        "load_t2i",
        lambda path, device, dtype, config_file=None: bases.append((path, config_file)) or object(),
    )
    monkeypatch.setattr(
        models,
        "load_t2v",
        lambda path, base=None, device="cpu", dtype=None, allow_pickle=False: loads.append(base)
        or Loaded(path, base, device, dtype),
    )
    module = models.resolve("mm_sd_v15_v2.safetensors")
    webui.shared.sd_model = SimpleNamespace(is_sd1=False, sd_checkpoint_info=SimpleNamespace(filename="x"))
    with pytest.raises(SettingsError, match="t2v_model: this T2V model .* must be SD1.x"):
        models.get_t2v(module)
    checkpoint = tmp_path / "dreamy.safetensors"
    (tmp_path / "dreamy.yaml").write_text("model: {}")
    webui.shared.sd_model = SimpleNamespace(is_sd1=True, sd_checkpoint_info=SimpleNamespace(filename=str(checkpoint)))
    backend = models.get_t2v(module)
    assert bases == [(str(checkpoint), str(tmp_path / "dreamy.yaml"))]
    assert backend.base is loads[0] is not None
    assert models.get_t2v(module) is backend and len(bases) == 1


# ------------------------------------------------------------------------------ api.check_request


def request(args=None, title="VideoElevator", **fields):
    body = {"prompt": "a lighthouse", "negative_prompt": "blurry", "sampler_name": "Euler", **fields}
    if args is not None:
        body["alwayson_scripts"] = {title: {"args": args}}
    return body


def enabled(**settings):
    return {"enable": True, "t2v_model": "zs", "frames": 8, **settings}


def test_requests_without_videoelevator_are_left_alone(webui, folders):
    api = webui.adapter("api")
    for body in (
        request(),
        request(args=[True], title="ADetailer"),
        {"alwayson_scripts": None},
        {"alwayson_scripts": ["VideoElevator"]},
        request(args=[{"enable": False, "t2v_model": "nowhere"}]),
        {"alwayson_scripts": {"VideoElevator": {}}},
    ):
        assert api.check_request(body) is body


@pytest.mark.parametrize("title", ["VideoElevator", "videoelevator", "VIDEOELEVATOR"])
def test_good_requests_pass_unchanged(webui, folders, title):
    api = webui.adapter("api")
    body = request(args=[enabled(preset="AnimateLCM-like")], title=title)
    assert api.check_request(body) is body
    positional = request(args=[True, "text2video/zs", 6], title=title)
    assert api.check_request(positional) is positional


def test_a_dict_of_named_settings_is_rewritten_into_the_list_the_host_needs(webui, folders):
    api = webui.adapter("api")
    body = request(args=enabled(frames=6), title="videoelevator")
    snapshot = json.loads(json.dumps(body))
    checked = api.check_request(body)
    assert checked["alwayson_scripts"]["videoelevator"]["args"] == [enabled(frames=6)]
    assert {k: v for k, v in checked.items() if k != "alwayson_scripts"} == {
        k: v for k, v in snapshot.items() if k != "alwayson_scripts"
    }
    assert body == snapshot  # the caller's body is not modified


@pytest.mark.parametrize(
    "body, field",
    [
        (request(args=[enabled(frames=0)]), "frames"),
        (request(args=[enabled(frames=16.5)]), "frames"),
        (request(args=[enabled(frame=4)]), "frame"),
        (request(args=[enabled(formats=["MOV"])]), "formats"),
        (request(args=[True, "zs", 8, "no such preset"]), "preset"),
        (request(args=[enabled(t2v_model="nope")]), "t2v_model"),
        (request(args=[enabled(t2v_model="../VideoElevator/zs")]), "t2v_model"),
        (request(args=[enabled(t2v_model="/etc")]), "t2v_model"),
        (request(args=[enabled(t2v_model="")]), "t2v_model"),
        (request(args=[enabled()], sampler_name="UniPC"), "sampler_name"),
        ({**request(args=[enabled()]), "sampler_name": None, "sampler_index": "DPM fast"}, "sampler_name"),
        (request(args=[enabled()], prompt="a cat AND a dog"), "prompt"),
        (request(args=[enabled()], refiner_checkpoint="sd_xl_refiner_1.0"), "refiner_checkpoint"),
        ({"alwayson_scripts": {"VideoElevator": [True]}}, "alwayson_scripts"),
        ({"alwayson_scripts": {"VideoElevator": {"args": "enable"}}}, "args"),
    ],
)
def test_bad_requests_are_refused_naming_the_field(webui, folders, body, field):
    with pytest.raises(SettingsError) as error:
        webui.adapter("api").check_request(body)
    assert error.value.field == field


def test_the_model_path_of_a_listed_model_is_not_a_name(webui, folders):
    with pytest.raises(SettingsError) as error:
        webui.adapter("api").check_request(request(args=[enabled(t2v_model=folders.ours)]))
    assert error.value.field == "t2v_model"


def test_the_models_route(webui, folders):
    response = webui.adapter("api").list_models_response()
    assert response["model_folder"] == os.path.join(webui.paths.models_path, "VideoElevator")
    assert {"name": "text2video/zs", "kind": "zeroscope", "folder": "text2video"} in response["models"]
    assert all(set(m) == {"name", "kind", "folder"} for m in response["models"])  # no server paths
    assert response["unusable"] == []


def test_a_t2v_model_that_cannot_run_is_listed_apart_with_its_reason(webui, folders):
    """A pickled motion module (no opt-in in the WebUI) is not offered; the models route says why,
    and a request naming it gets a 422 with the same reason, before any work starts."""
    pickled = os.path.join(webui.paths.models_path, "VideoElevator", "mm_sd_v15_v2.ckpt")
    torch.save({"down_blocks.0.motion_modules.0.proj_in.weight": torch.zeros(1)}, pickled)
    api = webui.adapter("api")
    response = api.list_models_response()
    assert "mm_sd_v15_v2.ckpt" not in [m["name"] for m in response["models"]]
    [entry] = response["unusable"]
    assert entry["name"] == "mm_sd_v15_v2.ckpt" and "pickled weights" in entry["error"]
    assert "mm_sd_v15_v2.ckpt" not in webui.adapter("models").model_names()
    with pytest.raises(SettingsError, match="mm_sd_v15_v2.ckpt cannot be used: .*pickled weights") as error:
        api.check_request(request(args=[enabled(t2v_model="mm_sd_v15_v2.ckpt")]))
    assert error.value.field == "t2v_model"


# ------------------------------------------------------------------------------ the ASGI wrapper


def asgi(api, body: bytes, chunks: int = 3):
    """Send `body` in `chunks` pieces through api.checked_route around a recording app."""
    seen = {}

    async def app(scope, receive, send):
        seen["scope"] = scope
        message = await receive()
        seen["body"] = message["body"]
        seen["more"] = message["more_body"]
        seen["after"] = await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    size = max(1, -(-len(body) // chunks))
    pieces = [body[k : k + size] for k in range(0, len(body), size)] or [b""]
    messages = [
        {"type": "http.request", "body": piece, "more_body": k < len(pieces) - 1} for k, piece in enumerate(pieces)
    ]
    sent = []

    async def receive():  # like a server: the body, then a disconnect when the client goes away
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(api.checked_route(app)({"type": "http", "path": "/sdapi/v1/txt2img"}, receive, send))
    return seen, sent


def test_the_wrapper_hands_a_good_body_on_unchanged(webui, folders):
    api = webui.adapter("api")
    body = json.dumps(request(args=[enabled()])).encode()
    seen, sent = asgi(api, body)
    assert seen["body"] == body and seen["more"] is False
    assert seen["after"] == {"type": "http.disconnect"}
    assert [m.get("status") for m in sent] == [200, None]


@pytest.mark.parametrize("body", [b"not json {", b"[1, 2]", b""])
def test_the_wrapper_hands_other_bodies_to_the_host(webui, body):
    seen, _ = asgi(webui.adapter("api"), body)
    assert seen["body"] == body


def test_the_wrapper_rewrites_a_dict_of_settings(webui, folders):
    seen, _ = asgi(webui.adapter("api"), json.dumps(request(args=enabled())).encode())
    assert json.loads(seen["body"])["alwayson_scripts"]["VideoElevator"]["args"] == [enabled()]


def test_the_wrapper_answers_a_bad_request_with_422(webui, folders):
    seen, sent = asgi(webui.adapter("api"), json.dumps(request(args=[enabled(fps=0)])).encode())
    assert seen == {}  # the host never saw it
    start, body = sent
    assert start["status"] == 422
    headers = dict(start["headers"])
    assert headers[b"content-type"] == b"application/json"
    assert int(headers[b"content-length"]) == len(body["body"])
    payload = json.loads(body["body"])
    assert payload["error"] == "VideoElevatorError" and payload["field"] == "fps"
    assert payload["detail"].startswith("fps: must be between 1 and 60")


def test_the_wrapper_answers_an_overflowing_number_with_422(webui, folders):
    body = json.dumps(request(args=[enabled()])).replace('"frames": 8', '"frames": 1e999').encode()
    seen, sent = asgi(webui.adapter("api"), body)
    assert sent[0]["status"] == 422 and json.loads(sent[1]["body"])["field"] == "frames"


def test_routes_are_registered_once(webui):
    api = webui.adapter("api")

    class Route:
        def __init__(self, path, methods):
            self.path, self.methods, self.app = path, methods, object()

    routes = [
        Route("/sdapi/v1/txt2img", {"POST"}),
        Route("/sdapi/v1/img2img", {"POST"}),
        Route("/sdapi/v1/txt2img", {"GET"}),
    ]
    originals = [route.app for route in routes]
    added = []
    app = SimpleNamespace(
        router=SimpleNamespace(routes=routes),
        add_api_route=lambda path, endpoint, methods: added.append((path, endpoint, methods)),
    )
    api.on_app_started(None, app)
    assert added == [("/videoelevator/v1/models", api.list_models_response, ["GET"])]
    wrapped = routes[0].app
    assert wrapped is not originals[0] and wrapped._videoelevator is True
    assert routes[1].app is originals[1] and routes[2].app is originals[2]
    api.on_app_started(None, app)  # a second call (UI reload) does not wrap twice
    assert routes[0].app is wrapped
