"""The extension's arguments, described once: `CONTROLS`, the table of every control of the txt2img
accordion. From it come the positional order (UI order = API positional order), the API names, the
defaults, the coercion and validation of each value, the infotext fields and paste names, and in
ui.py the gradio components themselves.

Pure Python (no gradio, no `modules.*`), so CI tests it without a host. The WebUI hands a script
its UI values positionally; API clients may instead put one dict of named settings in the first
slot (`"args": [{"enable": true, "frames": 16}]`) and the remaining slots then hold the UI
defaults, which are ignored. Missing names take their defaults; unknown names and bad values are
refused with a SettingsError naming the field.

API clients rely on the positional order: new controls are APPENDED at the end of `CONTROLS`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

from lib_elevator.cross_frame import ANCHORS
from lib_elevator.filters import FILTER_METHODS
from lib_elevator.settings import COMPAT_MODES, FORMATS, INVERSION_PROMPTS, MAX_FRAMES, PRESETS, Settings, SettingsError

DEFAULT_PRESET = "ZeroScope-like"
_DEFAULTS = Settings()

# Kinds of control (ui.py maps each to a gradio component).
ACCORDION = "accordion"  # the accordion's own checkbox (InputAccordion): the `enable` switch
CHECKBOX = "checkbox"
DROPDOWN = "dropdown"
RADIO = "radio"
INT_SLIDER = "int_slider"
FLOAT_SLIDER = "float_slider"
TEXTBOX = "textbox"
CHECKBOX_GROUP = "checkbox_group"
KINDS = (ACCORDION, CHECKBOX, DROPDOWN, RADIO, INT_SLIDER, FLOAT_SLIDER, TEXTBOX, CHECKBOX_GROUP)

# Where a control sits, laid out in this order: above the Advanced accordion, inside it, below it.
MAIN, ADVANCED, OUTPUT = "main", "advanced", "output"
SECTIONS = (MAIN, ADVANCED, OUTPUT)


@dataclass(frozen=True)
class Control:
    """One control of the accordion = one argument of the script."""

    name: str  # public name: API dict key, infotext field, elem_id suffix, Settings field where one
    kind: str  # one of KINDS
    label: str
    default: object  # the API default (the UI's too, except host-given choices and formats)
    tip: str = ""
    section: str = MAIN  # one of SECTIONS
    row: str | None = None  # consecutive controls of a section with the same row share a gr.Row
    minimum: float | None = None  # sliders (the UI's range; Settings.validate checks what a job accepts)
    maximum: float | None = None
    step: float | None = None
    choices: tuple[str, ...] = ()  # dropdown, radio, checkbox group
    host_choices: bool = False  # the choices are listed by the running host (the UI adds a refresh button)
    blank_is_default: bool = False  # an empty choice means the default
    lines: int = 1  # textbox
    strip: bool = True  # textbox: surrounding whitespace removed


COMPAT_TIP = (
    '"authors" switches on every documented difference from the authors\' implementation that changes '
    "the output (the inversion's two anchor groups, the negative-prompt inversion, the T2V step grid from "
    "the job's steps and their SDEdit start timestep, their ideal/box filter masks) to reproduce their "
    'results; "none" uses this project\'s choices. See docs/algorithm.md.'
)

CONTROLS: tuple[Control, ...] = (
    Control("enable", ACCORDION, "VideoElevator", False),
    Control(
        "t2v_model", DROPDOWN, "T2V model", "", row="model", host_choices=True,
        tip="The text-to-video model that refines motion: a ZeroScope/ModelScope diffusers folder, an "
        "AnimateDiff motion module, an AnimateLCM folder, VideoCrafter2 (model.ckpt) or LaVie (lavie_base.pt), "
        "from models/VideoElevator (and models/text2video, models/AnimateDiff). Your checkpoint and LoRAs draw "
        "the frames. Weight terms: VideoCrafter2 research / non-commercial use (its authors' README); LaVie open "
        "for research and commercial use, commercial licence on request (its README).",
    ),
    Control(
        "frames", INT_SLIDER, "Frames", _DEFAULTS.frames, row="frames", minimum=2, maximum=MAX_FRAMES, step=1,
        tip="Frames of the video; they are the batch of the job (Batch count = number of videos).",
    ),
    Control(
        "preset", DROPDOWN, "Preset", DEFAULT_PRESET, row="frames", choices=tuple(PRESETS), blank_is_default=True,
        tip="Fills the advanced settings with values for the T2V model: the paper's for ZeroScope-like models and "
        "LaVie (50 steps), the authors' AnimateLCM script (30 steps), VideoCrafter2's guidance (50 steps).",
    ),
    Control(
        "refine_points", TEXTBOX, "Refine points", _DEFAULTS.refine_points, section=ADVANCED,
        tip="When the T2V model refines motion, as in the paper: '10%,30%,50%,70%' of a DDIM schedule of "
        "your step count, or steps remaining ('45,35,25,15' of 50). Other samplers refine at the step "
        "with the same noise level (Karras schedules reach low noise early).",
    ),
    Control(
        "t2v_steps", INT_SLIDER, "T2V steps", _DEFAULTS.t2v_steps, section=ADVANCED, row="t2v",
        minimum=1, maximum=30, step=1,
        tip="N: denoising steps the T2V model takes at each refine point (on its 50-step grid).",
    ),
    Control(
        "t2v_guidance", FLOAT_SLIDER, "T2V guidance", _DEFAULTS.t2v_guidance, section=ADVANCED, row="t2v",
        minimum=0.0, maximum=20.0, step=0.5,
        tip="Classifier-free guidance of the T2V model (paper 7.5; AnimateLCM 2.0).",
    ),
    Control(
        "noise_mix", FLOAT_SLIDER, "Noise mix", _DEFAULTS.noise_mix, section=ADVANCED, row="t2v",
        minimum=0.0, maximum=3.0, step=0.05,
        tip="alpha: how much initial noise all frames share (0 = independent frames).",
    ),
    Control(
        "filter_method", DROPDOWN, "Filter", _DEFAULTS.filter_method, section=ADVANCED, row="filter",
        choices=tuple(FILTER_METHODS),
        tip="Low-pass filter over time applied before each refine except the last (removes flicker).",
    ),
    Control(
        "filter_spatial", FLOAT_SLIDER, "Filter spatial cut-off", _DEFAULTS.filter_spatial, section=ADVANCED,
        row="filter", minimum=0.05, maximum=4.0, step=0.05,
        tip="Spatial cut-off d_s of the filter (higher passes more detail).",
    ),
    Control(
        "filter_temporal", FLOAT_SLIDER, "Filter temporal cut-off", _DEFAULTS.filter_temporal, section=ADVANCED,
        row="filter", minimum=0.05, maximum=2.0, step=0.05,
        tip="Temporal cut-off d_t (lower = smoother motion, less flicker).",
    ),
    Control(
        "anchor", RADIO, "Anchor", _DEFAULTS.anchor, section=ADVANCED, row="inversion", choices=tuple(ANCHORS),
        tip="Cross-frame attention: frames attend to the first frame, or to the first and the previous one.",
    ),
    Control(
        "inversion_steps", INT_SLIDER, "Inversion steps (0 = full)", _DEFAULTS.inversion_steps, section=ADVANCED,
        row="inversion", minimum=0, maximum=50, step=1,
        tip="DDIM inversion steps back to the sampler's noise level: 0 = every step of the schedule "
        "(the paper); fewer is faster (1 step: about the cost of a plain batch) and less exact.",
    ),
    Control(
        "pnp", CHECKBOX, "PnP correction", _DEFAULTS.pnp, section=ADVANCED, row="inversion",
        tip="PnP-inversion correction after each refine (the authors' default; one extra UNet call per step). "
        "It follows the full inversion path: with fewer inversion steps it has (almost) nothing to correct.",
    ),
    Control(
        "t2v_prompt", TEXTBOX, "T2V prompt", _DEFAULTS.t2v_prompt, section=ADVANCED, lines=2, strip=False,
        tip="Prompt for the T2V model (empty = the main prompt, without weights).",
    ),
    Control(
        "t2v_negative_prompt", TEXTBOX, "T2V negative prompt", _DEFAULTS.t2v_negative_prompt, section=ADVANCED,
        strip=False, tip="Negative prompt for the T2V model (empty = the main negative prompt).",
    ),
    Control(
        "fps", INT_SLIDER, "FPS", _DEFAULTS.fps, section=OUTPUT, row="output", minimum=1, maximum=60, step=1,
        tip="Frames per second of the video.",
    ),
    Control(
        "formats", CHECKBOX_GROUP, "Outputs", list(_DEFAULTS.formats), section=OUTPUT, row="output",
        choices=FORMATS, tip="Video files to write (PNG = the frames as a folder of images).",
    ),
    Control(
        "inversion_prompt", RADIO, "Inversion prompt", _DEFAULTS.inversion_prompt, section=ADVANCED,
        choices=INVERSION_PROMPTS,
        tip="Condition the inversion on the empty prompt, or on the negative prompt as the authors' code does.",
    ),
    # ---- appended after the first release: new controls go below, never in between
    Control(
        "compat", RADIO, "Reproduce the authors' code", _DEFAULTS.compat, section=ADVANCED, choices=COMPAT_MODES,
        tip=COMPAT_TIP,
    ),
    Control(
        "t2v_fps", INT_SLIDER, "T2V frame-rate condition", _DEFAULTS.t2v_fps, section=ADVANCED,
        minimum=1, maximum=60, step=1,
        tip="The frame rate a VideoCrafter2 model is conditioned on (its authors use 28; lower = slower motion). "
        "Other T2V models ignore it.",
    ),
    Control(
        "t2v_window", INT_SLIDER, "T2V window (0 = model's length)", _DEFAULTS.t2v_window, section=ADVANCED,
        row="windows", minimum=0, maximum=MAX_FRAMES, step=1,
        tip="Frames the T2V model sees at once. Longer videos are refined in overlapping windows of this length; "
        "0 = the length the model was trained on (24 for ZeroScope v2, 16 for the others).",
    ),
    Control(
        "t2v_overlap", INT_SLIDER, "T2V window overlap", _DEFAULTS.t2v_overlap, section=ADVANCED, row="windows",
        minimum=0, maximum=MAX_FRAMES - 1, step=1,
        tip="Frames shared by neighbouring windows; their predictions are blended across it (more = smoother "
        "seams, more T2V calls).",
    ),
    Control(
        "frame_chunk", INT_SLIDER, "Frames per UNet call (0 = auto)", _DEFAULTS.frame_chunk, section=ADVANCED,
        minimum=0, maximum=MAX_FRAMES, step=1,
        tip="The image model denoises this many frames at a time, all sharing the anchor frame, so memory does "
        "not grow with the frame count; same frames as all at once. 0 = by free GPU memory (all on a CPU).",
    ),
)

BY_NAME = {control.name: control for control in CONTROLS}
ARG_NAMES = tuple(control.name for control in CONTROLS)  # UI order = positional API order
DEFAULTS = {control.name: control.default for control in CONTROLS}
_SETTINGS_FIELDS = {f.name for f in dataclasses.fields(Settings)}
SETTING_NAMES = tuple(name for name in ARG_NAMES if name in _SETTINGS_FIELDS)  # the rest: enable, t2v_model, preset
# settings a preset fills in (the dict form applies the preset first, then the fields given)
PRESET_FIELDS = tuple(PRESETS[DEFAULT_PRESET])


@dataclass(frozen=True)
class ElevatorArgs:
    enable: bool
    t2v_model: str
    preset: str
    settings: Settings

    def public(self) -> dict:
        """The settings under their public names (infotext, API echo)."""
        s = self.settings
        values = {name: getattr(s, name) for name in SETTING_NAMES}
        values.update(enable=self.enable, t2v_model=self.t2v_model, preset=self.preset, formats=list(s.formats))
        return {name: values[name] for name in ARG_NAMES}


# ------------------------------------------------------------------------------ coercion by kind


def _coerce(name: str, value):
    """`value` of the control `name` in its Python type, or a SettingsError naming the field."""
    control = BY_NAME.get(name)
    if control is None:
        raise SettingsError(name, "unknown setting")
    kind = control.kind
    if kind in (ACCORDION, CHECKBOX):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise SettingsError(name, f"must be true or false; got {value!r}")
    if kind == INT_SLIDER:
        number = _finite_number(name, value)
        if number != int(number):
            raise SettingsError(name, f"must be a whole number; got {value!r}")
        return int(number)
    if kind == FLOAT_SLIDER:
        return _finite_number(name, value)
    if kind == CHECKBOX_GROUP:
        return _choice_list(control, value)
    text = _text(name, value)  # TEXTBOX, DROPDOWN, RADIO
    if kind == TEXTBOX:
        return text.strip() if control.strip else text
    text = text.strip()
    if control.blank_is_default and not text:
        return control.default
    if control.choices and text not in control.choices:
        raise SettingsError(name, f"must be one of {', '.join(control.choices)}; got {value!r}")
    return text


def _text(name: str, value) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise SettingsError(name, f"must be text; got {value!r}")
    return value


def _choice_list(control: Control, value) -> tuple[str, ...]:
    """A non-empty list of the control's choices (case-insensitive, deduplicated; text: comma-separated)."""
    name, canonical = control.name, {choice.upper(): choice for choice in control.choices}
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise SettingsError(name, f"must be a list of {', '.join(control.choices)}; got {value!r}")
    given = [str(item).strip().upper() for item in items if str(item).strip()]
    if not given or any(item not in canonical for item in given):
        raise SettingsError(name, f"must be a non-empty list of {', '.join(control.choices)}; got {value!r}")
    return tuple(dict.fromkeys(canonical[item] for item in given))


def _finite_number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SettingsError(name, f"must be a number; got {value!r}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise SettingsError(name, f"must be a finite number; got {value!r}")
    return number


def _defaults() -> dict:
    return {name: _coerce(name, default) for name, default in DEFAULTS.items()}


def _build(values: dict) -> ElevatorArgs:
    settings = Settings(**{name: values[name] for name in SETTING_NAMES}).validate()
    return ElevatorArgs(values["enable"], values["t2v_model"], values["preset"], settings)


def from_named(named: dict) -> ElevatorArgs:
    """The API's dict form: defaults, then the preset's values, then the fields given."""
    unknown = sorted(set(named) - set(ARG_NAMES))
    if unknown:
        raise SettingsError(unknown[0], f"unknown setting; the settings are: {', '.join(ARG_NAMES)}")
    values = _defaults()
    values.update(PRESETS[_coerce("preset", named.get("preset", DEFAULT_PRESET))])
    values.update({name: _coerce(name, value) for name, value in named.items()})
    return _build(values)


def from_positional(args) -> ElevatorArgs:
    """The UI's positional values (missing trailing values take their defaults; extra ones are ignored)."""
    args = list(args)
    if args and isinstance(args[0], dict):
        return from_named(args[0])
    values = _defaults()
    values.update({name: _coerce(name, value) for name, value in zip(ARG_NAMES, args)})
    return _build(values)


def with_overrides(args, overrides: dict) -> ElevatorArgs:
    """The job's arguments with some of them replaced (the X/Y/Z plot's axes); a preset among them fills
    its fields first, as in the dict form."""
    values = {name: _coerce(name, value) for name, value in from_positional(args).public().items()}
    if "preset" in overrides:
        values.update(PRESETS[_coerce("preset", overrides["preset"])])
    values.update({name: _coerce(name, value) for name, value in overrides.items()})
    return _build(values)


def coerce(name: str, value):
    """`value` for the control `name` as the accordion and the API take it, or a SettingsError."""
    return _coerce(name, value)


def is_enabled(args) -> bool:
    """Cheap check used before full parsing (a bad dict still counts as 'asked for')."""
    args = list(args)
    if not args:
        return False
    enable = args[0].get("enable", False) if isinstance(args[0], dict) else args[0]
    return enable is True or (isinstance(enable, str) and enable.strip().lower() == "true")


# ------------------------------------------------------------------------------------ infotext

INFOTEXT_KEY = "VideoElevator"


def paste_name(name: str) -> str:
    """The key under which the infotext paste finds the control `name`'s value."""
    return f"{INFOTEXT_KEY} {name}"


PASTE_NAMES = tuple(paste_name(name) for name in ARG_NAMES)


def to_infotext(parsed: ElevatorArgs) -> str:
    """One infotext value holding every setting (the host quotes it since it contains ':' and ',')."""
    values = parsed.public()
    values.pop("enable")
    return json.dumps(values, separators=(",", ":"))


def from_infotext(text: str) -> dict:
    """Settings from an infotext value; {} when it is not ours or unreadable."""
    try:
        values = json.loads(text)
    except (TypeError, ValueError):
        return {}
    if not isinstance(values, dict):
        return {}
    return {name: value for name, value in values.items() if name in DEFAULTS} | {"enable": True}
