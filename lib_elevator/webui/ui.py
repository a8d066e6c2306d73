"""The txt2img accordion, built from the table of controls in args.py (`CONTROLS`): one component per
entry, laid out by section (main, Advanced, output) and row, returned in the table's order = the
positional API order. Only gradio features of both gradio 3.41 (AUTOMATIC1111) and 4.40 (Forge) are used:
no `.style()`, `gr.update` for every change, a model dropdown that accepts a value it does not list (a
model deleted since, or none yet: gradio 4 refuses such a value otherwise)."""

from __future__ import annotations

import contextlib
import json
import os

import gradio as gr
from modules import shared
from modules.ui_components import InputAccordion, ToolButton

from lib_elevator.settings import PRESETS
from lib_elevator.webui import args as ve_args
from lib_elevator.webui import models, outputs
from lib_elevator.webui.args import ACCORDION, ADVANCED, CONTROLS, DEFAULTS, INFOTEXT_KEY, Control

ELEM_PREFIX = "videoelevator"


def _component(control: Control, value, choices):
    """The gradio component of one control."""
    common = dict(label=control.label, value=value, elem_id=f"{ELEM_PREFIX}_{control.name}", info=control.tip or None)
    kind = control.kind
    if kind in (ve_args.INT_SLIDER, ve_args.FLOAT_SLIDER):
        return gr.Slider(control.minimum, control.maximum, step=control.step, **common)
    if kind == ve_args.CHECKBOX:
        return gr.Checkbox(**common)
    if kind == ve_args.TEXTBOX:
        return gr.Textbox(lines=control.lines, **common)
    if kind == ve_args.DROPDOWN:
        return gr.Dropdown(choices=choices, allow_custom_value=control.host_choices, **common)
    if kind == ve_args.RADIO:
        return gr.Radio(choices=choices, **common)
    if kind == ve_args.CHECKBOX_GROUP:
        return gr.CheckboxGroup(choices=choices, **common)
    raise ValueError(f"{control.name}: no component for the kind {kind!r}")


def _initial(control: Control) -> tuple[object, list]:
    """The UI's value and choices of a control: the table's, except choices listed by the host (the
    first of them is selected) and the output formats (a host setting)."""
    if control.host_choices:
        names = models.model_names()
        return (names[0] if names else ""), names
    if control.name == "formats":
        return list(shared.opts.data.get("videoelevator_default_formats", DEFAULTS["formats"])), list(control.choices)
    return control.default, list(control.choices)


def _place(section: str, made: dict, refresh: list) -> None:
    """Create the controls of one section in table order, consecutive ones of the same row in a gr.Row."""
    entries = [c for c in CONTROLS if c.section == section and c.kind != ACCORDION]
    index = 0
    while index < len(entries):
        row = entries[index].row
        group = [entries[index]]
        while row is not None and index + len(group) < len(entries) and entries[index + len(group)].row == row:
            group.append(entries[index + len(group)])
        with gr.Row() if row is not None else contextlib.nullcontext():
            for control in group:
                value, choices = _initial(control)
                made[control.name] = _component(control, value, choices)
                if control.host_choices:
                    button = ToolButton(value="\U0001f504", elem_id=f"{ELEM_PREFIX}_refresh", tooltip="Refresh the T2V models")
                    refresh.append((button, made[control.name]))
        index += len(group)


def build(script) -> list:
    """Create the controls; returns them in the table's (= positional) order."""
    (accordion,) = [c for c in CONTROLS if c.kind == ACCORDION]
    made, refresh = {}, []
    with InputAccordion(accordion.default, label=accordion.label, elem_id=ELEM_PREFIX) as enable:
        made[accordion.name] = enable
        _place(ve_args.MAIN, made, refresh)
        with gr.Accordion("Advanced", open=False, elem_id=f"{ELEM_PREFIX}_advanced"):
            _place(ADVANCED, made, refresh)
        _place(ve_args.OUTPUT, made, refresh)
        video = gr.Video(label="Last video", interactive=False, height=320, elem_id=f"{ELEM_PREFIX}_video")

    # `input`, not `change`: only a user's choice fills the fields, not a pasted infotext
    made["preset"].input(
        fn=lambda name: [gr.update(value=PRESETS[name][field]) for field in ve_args.PRESET_FIELDS],
        inputs=[made["preset"]],
        outputs=[made[field] for field in ve_args.PRESET_FIELDS],
        show_progress=False,
    )
    for button, dropdown in refresh:
        button.click(fn=lambda: gr.update(choices=models.model_names()), outputs=[dropdown], show_progress=False)
    script.video_player = video

    controls = [made[name] for name in ve_args.ARG_NAMES]
    script.infotext_fields = list(zip(controls, ve_args.PASTE_NAMES))
    script.paste_field_names = list(ve_args.PASTE_NAMES)
    return controls


def attach_player(script, generation_info) -> None:
    """Show the MP4 of the request whose generation info the hidden txt2img textbox receives (it
    changes when a job finishes; gradio 3's Gallery has no change event). Each browser's textbox
    holds its own request's Processed JSON, so each browser sees its own video."""
    player = getattr(script, "video_player", None)
    if player is None:
        return
    generation_info.change(fn=video_of, inputs=[generation_info], outputs=[player], show_progress=False)


def video_of(generation_info: str) -> str | None:
    """The first MP4 that the request behind this generation-info JSON wrote (outputs.report lists it
    under extra_generation_params), or None. Only a file this server wrote is returned: the textbox's
    value comes from the browser."""
    try:
        info = json.loads(generation_info)
        videos = info["extra_generation_params"][outputs.INFO_KEY]["videos"]
        paths = [v["path"] for v in videos if v.get("format") == "MP4"]
    except (TypeError, ValueError, KeyError, AttributeError):
        return None
    for path in paths:
        if isinstance(path, str) and outputs.is_written_mp4(path) and os.path.isfile(path):
            return path
    return None


def on_infotext_pasted(infotext: str, params: dict) -> None:
    """Split our one infotext value into the per-control keys `infotext_fields` name; a setting the
    value lacks (an infotext from before it existed) takes its default."""
    if INFOTEXT_KEY not in params:
        params[ve_args.paste_name("enable")] = False  # parameters of a plain image: make a plain image
        return
    values = ve_args.from_infotext(params[INFOTEXT_KEY])
    if not values:
        return
    for name in ve_args.ARG_NAMES:
        # raw types: the paste converts to each control's type
        params[ve_args.paste_name(name)] = values.get(name, DEFAULTS[name])
