"""The txt2img controls (lib_elevator/webui/ui.py), the infotext round trip, the Settings section
(options.py) and the script's `ui()`, inside the stand-in host. gradio is not installed in CI: the
stand-in's `gradio` records each control's arguments, value and events, which is all ui.py needs."""

import json
import os
import re
from types import SimpleNamespace

import host_stub
import numpy as np
import pytest

from lib_elevator.settings import Settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEBUI_SOURCES = os.path.join(ROOT, "lib_elevator", "webui")


@pytest.fixture
def webui(tmp_path):
    with host_stub.installed(tmp_path) as host:
        from host_stub import minihost

        minihost.zeroscope_layout(os.path.join(host.paths.models_path, "VideoElevator", "tiny-zs"))
        minihost.zeroscope_layout(os.path.join(host.paths.models_path, "VideoElevator", "zz-other"))
        yield host


class Script:
    infotext_fields = paste_field_names = None


def build(host, created=None):
    """ui.build on a bare script; `created`, when given, collects every component it makes."""
    script = Script()
    base = host.gradio.Component
    original = base.__init__

    def record(self, *args, **kwargs):
        original(self, *args, **kwargs)
        created.append(self)

    if created is not None:
        base.__init__ = record
    try:
        controls = host.adapter("ui").build(script)
    finally:
        base.__init__ = original
    return script, controls


STUB_CLASS = {
    "accordion": "InputAccordion",
    "checkbox": "Checkbox",
    "dropdown": "Dropdown",
    "radio": "Radio",
    "int_slider": "Slider",
    "float_slider": "Slider",
    "textbox": "Textbox",
    "checkbox_group": "CheckboxGroup",
}


def test_the_builder_makes_one_component_per_control_in_order(webui):
    args = webui.adapter("args")
    script, controls = build(webui)
    assert len(controls) == len(args.CONTROLS)
    for control, component in zip(args.CONTROLS, controls):
        name = control.name
        assert type(component).__name__ == STUB_CLASS[control.kind], name
        assert component.elem_id == ("videoelevator" if name == "enable" else f"videoelevator_{name}")
        assert component.label == control.label, name
        if control.tip:
            assert component.kwargs["info"] == control.tip, name
        if control.kind in (args.INT_SLIDER, args.FLOAT_SLIDER):
            assert (component.minimum, component.maximum) == (control.minimum, control.maximum), name
            assert component.kwargs["step"] == control.step, name
        if control.choices:
            assert component.kwargs["choices"] == list(control.choices), name
        if control.kind == args.TEXTBOX:
            assert component.kwargs["lines"] == control.lines, name
    values = dict(zip(args.ARG_NAMES, (c.value for c in controls)))
    assert values == {**args.DEFAULTS, "t2v_model": "tiny-zs"}  # the host's first model
    assert controls[1].kwargs["choices"] == ["tiny-zs", "zz-other"]
    # the API's default arguments are these values: they must parse, disabled
    parsed = args.from_positional([c.value for c in controls])
    assert parsed.enable is False and parsed.settings == args.from_positional([]).settings
    assert script.video_player.elem_id == "videoelevator_video"
    assert script.infotext_fields == list(zip(controls, args.PASTE_NAMES))
    assert script.paste_field_names == list(args.PASTE_NAMES)


def test_the_layout_follows_the_sections_and_rows_of_the_table(webui):
    """Creation order is layout order: the main controls, the Advanced accordion with its controls,
    then the output controls; a gr.Row opens before each run of controls sharing a row."""
    args = webui.adapter("args")
    created = []
    build(webui, created)
    made = []
    for component in created:
        if type(component).__name__ == "Row":
            made.append("row")
        elif component.elem_id == "videoelevator_advanced":
            made.append("advanced")
        elif component.elem_id:
            made.append(component.elem_id.removeprefix("videoelevator").lstrip("_") or "enable")
    expected = ["enable"]
    for section in args.SECTIONS:
        expected += ["advanced"] if section == args.ADVANCED else []
        previous = None
        for control in (c for c in args.CONTROLS if c.section == section and c.kind != args.ACCORDION):
            if control.row is not None and control.row != previous:
                expected.append("row")
            expected.append(control.name)
            expected += ["refresh"] if control.host_choices else []
            previous = control.row
    assert made == [*expected, "video"]
    assert made.index("compat") > made.index("advanced") > made.index("preset")  # compat is an advanced setting
    assert made.index("fps") > made.index("compat")


def test_default_formats_come_from_the_settings(webui):
    webui.shared.opts.data["videoelevator_default_formats"] = ["GIF", "WEBP"]
    args = webui.adapter("args")
    _, controls = build(webui)
    formats = controls[args.ARG_NAMES.index("formats")]
    assert formats.elem_id == "videoelevator_formats" and formats.value == ["GIF", "WEBP"]


def test_an_empty_model_folder_gives_an_empty_model_choice(webui):
    import shutil

    shutil.rmtree(os.path.join(webui.paths.models_path, "VideoElevator"))
    _, controls = build(webui)
    assert controls[1].value == "" and controls[1].kwargs["choices"] == []


def test_the_preset_fills_its_fields_and_refresh_lists_the_models(webui):
    from lib_elevator.settings import PRESETS

    args = webui.adapter("args")
    created = []
    _, controls = build(webui, created)
    by_name = dict(zip(args.ARG_NAMES, controls))
    ((event, change),) = by_name["preset"].events
    # a user's choice fills the fields; a pasted infotext (a programmatic change) must not
    assert event == "input" and change["inputs"] == [by_name["preset"]]
    assert [c.elem_id for c in change["outputs"]] == [f"videoelevator_{n}" for n in args.PRESET_FIELDS]
    for preset, values in PRESETS.items():
        updates = change["fn"](preset)
        assert [u["value"] for u in updates] == [values[n] for n in args.PRESET_FIELDS]
    refresh = next(c for c in created if c.elem_id == "videoelevator_refresh")
    ((event, click),) = refresh.events
    assert click["outputs"] == [by_name["t2v_model"]]
    from host_stub import minihost

    minihost.zeroscope_layout(os.path.join(webui.paths.models_path, "VideoElevator", "added-later"))
    assert click["fn"]()["choices"] == ["added-later", "tiny-zs", "zz-other"]


def test_infotext_round_trip_restores_every_setting(webui):
    """to_infotext -> the host's infotext line (quoted) -> parsed back -> on_infotext_pasted ->
    each control's paste conversion -> the positional arguments of the next job."""
    args, infotext = webui.adapter("args"), webui.infotext_utils
    script, controls = build(webui)
    original = args.from_positional(
        [
            {
                "enable": True,
                "t2v_model": "zz-other",
                "frames": 12,
                "preset": "AnimateLCM-like",
                "refine_points": "45,35,25",
                "t2v_steps": 5,
                "t2v_guidance": 2.5,
                "noise_mix": 0.3,
                "filter_method": "butterworth",
                "filter_spatial": 0.75,
                "filter_temporal": 0.2,
                "anchor": "first_prev",
                "inversion_steps": 3,
                "pnp": False,
                "t2v_prompt": 'a "quoted", tricky: prompt\nwith a newline \\ and ü',
                "t2v_negative_prompt": "low quality, blurry: 1.2",
                "fps": 24,
                "formats": ["WEBP", "MP4"],
                "inversion_prompt": "negative",
                "compat": "authors",
            }
        ]
    )
    line = infotext.create_line(
        {
            "Steps": 20,
            "Sampler": "Euler",
            "CFG scale": 7,
            "Seed": 123,
            "Size": "64x64",
            "VideoElevator": args.to_infotext(original),
            "Version": "v1.10.1",
        }
    )
    text = f"a lighthouse, storm\nNegative prompt: blurry\n{line}"
    params = infotext.parse_generation_parameters(text)
    assert params["Seed"] == "123" and params["Version"] == "v1.10.1"  # the neighbours survive
    webui.script_callbacks.on_infotext_pasted(webui.adapter("ui").on_infotext_pasted)
    webui.script_callbacks.infotext_pasted_callback(text, params)
    pasted = infotext.paste_values(script.infotext_fields, params)
    assert args.from_positional(pasted) == original
    assert script.paste_field_names == [key for _, key in script.infotext_fields]


def test_settings_missing_from_an_older_infotext_take_their_defaults(webui):
    args, ui = webui.adapter("args"), webui.adapter("ui")
    older = {name: value for name, value in args.from_positional([]).public().items() if name != "compat"}
    params = {"VideoElevator": json.dumps({**older, "frames": 12})}
    ui.on_infotext_pasted("", params)
    assert params["VideoElevator compat"] == "none" and params["VideoElevator frames"] == 12
    assert params["VideoElevator enable"] is True


def test_pasting_an_infotext_without_videoelevator_turns_it_off(webui):
    ui = webui.adapter("ui")
    params = {"Prompt": "x", "Steps": "20"}
    ui.on_infotext_pasted("x\nSteps: 20", params)
    assert params == {"Prompt": "x", "Steps": "20", "VideoElevator enable": False}  # a plain image's parameters
    params = {"VideoElevator": "{not json"}
    ui.on_infotext_pasted("", params)
    assert params == {"VideoElevator": "{not json"}


def finished_request(host, seed: int, formats: tuple) -> str:
    """Write one video as a UI job does and return the generation-info JSON the host puts into the
    hidden txt2img textbox (Processed.js() carries `extra_generation_params`)."""
    outputs = host.adapter("outputs")
    p = SimpleNamespace(
        outpath_samples=os.path.join(host.outputs_root, "txt2img-images"),
        seeds=[seed],
        prompts=["a lighthouse"],
        prompt="a lighthouse",
        negative_prompt="",
        steps=10,
        sampler_name="Euler",
        batch_size=2,
        is_api=False,
    )
    frames = (np.arange(2 * 16 * 24 * 3).reshape(2, 16, 24, 3) * seed % 256).astype(np.uint8)
    written = outputs.write_batch(p, Settings(formats=formats), frames, 0)
    processed = SimpleNamespace(images=[], extra_generation_params={"Seed resize": None}, comments="")
    outputs.report(p, processed, [written])
    return json.dumps({"seed": seed, "extra_generation_params": processed.extra_generation_params, "infotexts": []})


def test_the_player_shows_the_mp4_of_the_request_whose_info_it_sees(webui, tmp_path):
    ui = webui.adapter("ui")
    script, _ = build(webui)
    info = webui.gradio.Textbox(elem_id="generation_info_txt2img")
    ui.attach_player(script, info)
    ((event, change),) = info.events
    assert event == "change" and change["inputs"] == [info] and change["outputs"] == [script.video_player]
    show = change["fn"]
    first, second = finished_request(webui, 1, ("MP4", "GIF")), finished_request(webui, 2, ("GIF", "MP4"))
    first_mp4, second_mp4 = show(first), show(second)
    assert first_mp4.endswith(".mp4") and second_mp4.endswith(".mp4") and first_mp4 != second_mp4
    assert show(first) == first_mp4  # an earlier request's browser still sees its own video
    assert json.loads(first)["extra_generation_params"]["videoelevator"]["videos"][0]["path"] == first_mp4
    assert show(finished_request(webui, 3, ("GIF",))) is None  # no MP4 asked for
    for text in ("", "not json", "{}", "[]", '{"extra_generation_params": {"videoelevator": {"videos": [1]}}}', None):
        assert show(text) is None, text
    # the textbox's value comes from the browser: only an MP4 this server wrote is shown
    elsewhere = tmp_path / "elsewhere.mp4"
    elsewhere.write_bytes(b"not ours")
    forged = json.loads(first)
    forged["extra_generation_params"]["videoelevator"]["videos"] = [{"format": "MP4", "path": str(elsewhere)}]
    assert show(json.dumps(forged)) is None
    os.remove(second_mp4)
    assert show(second) is None  # deleted since
    other = webui.gradio.Textbox()
    ui.attach_player(Script(), other)  # before ui() ran: nothing to attach
    assert other.events == []


def test_the_settings_section(webui):
    shared = webui.shared
    webui.adapter("options").on_ui_settings()
    labels = shared.opts.data_labels
    ours = {key: info for key, info in labels.items() if key.startswith("videoelevator_")}
    assert set(ours) == {
        "videoelevator_model_dir",
        "videoelevator_outdir",
        "videoelevator_offload",
        "videoelevator_default_formats",
        "videoelevator_allow_pickle",
        "videoelevator_t2v_ff_chunk",
    }
    assert all(info.section == ("videoelevator", "VideoElevator") for info in ours.values())
    assert {key: shared.opts.data[key] for key in ours} == {
        "videoelevator_model_dir": "",
        "videoelevator_outdir": "",
        "videoelevator_offload": "auto",
        "videoelevator_default_formats": ["MP4"],
        "videoelevator_allow_pickle": False,
        "videoelevator_t2v_ff_chunk": 0,
    }
    assert ours["videoelevator_offload"].component_args["choices"] == ["auto", "always", "never"]
    assert {"videoelevator_model_dir", "videoelevator_outdir"} <= shared.restricted_opts
    assert ours["videoelevator_model_dir"].component_args is shared.hide_dirs
    assert shared.opts.videoelevator_offload == "auto"  # readable as an attribute once registered


def test_every_setting_the_adapter_reads_is_registered(webui):
    webui.adapter("options").on_ui_settings()
    read = set()
    for name in os.listdir(WEBUI_SOURCES):
        if name.endswith(".py"):
            with open(os.path.join(WEBUI_SOURCES, name), encoding="utf-8") as f:
                read |= set(re.findall(r"opts\.data\.get\(\s*\"(videoelevator_\w+)\"", f.read()))
    assert read and read <= set(webui.shared.opts.data_labels)


def test_the_script_builds_its_ui(webui):
    module = webui.load_script(os.path.join(ROOT, "scripts", "videoelevator.py"))
    script = module.VideoElevatorScript()
    controls = script.ui(False)
    assert [c.elem_id for c in controls][:3] == ["videoelevator", "videoelevator_t2v_model", "videoelevator_frames"]
    assert [key for _, key in script.infotext_fields][:2] == ["VideoElevator enable", "VideoElevator t2v_model"]
