"""The extension's arguments: UI order, API names, parsing and validation, infotext.

Pure Python (no gradio, no `modules.*`), so CI tests it without a host. The WebUI hands a script
its UI values positionally; API clients may instead put one dict of named settings in the first
slot (`"args": [{"enable": true, "frames": 16}]`) and the remaining slots then hold the UI
defaults, which are ignored. Missing names take their defaults; unknown names and bad values are
refused with a SettingsError naming the field.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from lib_elevator.settings import FORMATS, PRESETS, Settings, SettingsError

DEFAULT_PRESET = "ZeroScope-like"
_DEFAULTS = Settings()

# (public name, default) in UI order = positional API order.
ARGS: tuple[tuple[str, object], ...] = (
    ("enable", False),
    ("t2v_model", ""),
    ("frames", _DEFAULTS.frames),
    ("preset", DEFAULT_PRESET),
    ("refine_points", _DEFAULTS.refine_points),
    ("t2v_steps", _DEFAULTS.t2v_steps),
    ("t2v_guidance", _DEFAULTS.t2v_guidance),
    ("noise_mix", _DEFAULTS.noise_mix),
    ("filter_method", _DEFAULTS.filter_method),
    ("filter_spatial", _DEFAULTS.filter_spatial),
    ("filter_temporal", _DEFAULTS.filter_temporal),
    ("anchor", _DEFAULTS.anchor),
    ("inversion_steps", _DEFAULTS.inversion_steps),
    ("pnp", _DEFAULTS.pnp),
    ("t2v_prompt", _DEFAULTS.t2v_prompt),
    ("t2v_negative_prompt", _DEFAULTS.t2v_negative_prompt),
    ("fps", _DEFAULTS.fps),
    ("formats", list(_DEFAULTS.formats)),
    ("inversion_prompt", _DEFAULTS.inversion_prompt),
)
ARG_NAMES = tuple(name for name, _ in ARGS)
DEFAULTS = dict(ARGS)
# settings a preset fills in (the dict form applies the preset first, then the fields given)
PRESET_FIELDS = tuple(PRESETS[DEFAULT_PRESET])

_INTS = {"frames", "t2v_steps", "inversion_steps", "fps"}
_FLOATS = {"t2v_guidance", "noise_mix", "filter_spatial", "filter_temporal"}
_TEXTS = {"t2v_model", "preset", "refine_points", "filter_method", "anchor", "t2v_prompt", "t2v_negative_prompt",
          "inversion_prompt"}


@dataclass(frozen=True)
class ElevatorArgs:
    enable: bool
    t2v_model: str
    preset: str
    settings: Settings

    def public(self) -> dict:
        """The settings under their public names (infotext, API echo)."""
        s = self.settings
        values = {name: getattr(s, name) for name in ARG_NAMES if hasattr(s, name)}
        values.update(enable=self.enable, t2v_model=self.t2v_model, preset=self.preset, formats=list(s.formats))
        return {name: values[name] for name in ARG_NAMES}


def _coerce(name: str, value):
    if name == "enable" or name == "pnp":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise SettingsError(name, f"must be true or false; got {value!r}")
    if name in _INTS:
        number = _finite_number(name, value)
        if number != int(number):
            raise SettingsError(name, f"must be a whole number; got {value!r}")
        return int(number)
    if name in _FLOATS:
        return _finite_number(name, value)
    if name in _TEXTS:
        if value is None:
            return ""
        if not isinstance(value, str):
            raise SettingsError(name, f"must be text; got {value!r}")
        return value.strip() if name not in ("t2v_prompt", "t2v_negative_prompt") else value
    if name == "formats":
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise SettingsError(name, f"must be a list of {', '.join(FORMATS)}; got {value!r}")
        upper = [str(item).strip().upper() for item in items if str(item).strip()]
        bad = [item for item in upper if item not in FORMATS]
        if bad or not upper:
            raise SettingsError(name, f"must be a non-empty list of {', '.join(FORMATS)}; got {value!r}")
        return tuple(dict.fromkeys(upper))
    raise SettingsError(name, "unknown setting")


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


def _preset(name: str) -> str:
    name = name or DEFAULT_PRESET
    if name not in PRESETS:
        raise SettingsError("preset", f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return name


def _build(values: dict) -> ElevatorArgs:
    preset = _preset(values["preset"])
    fields = {name: values[name] for name in ARG_NAMES if name not in ("enable", "t2v_model", "preset")}
    settings = Settings(**fields).validate()
    return ElevatorArgs(values["enable"], values["t2v_model"], preset, settings)


def from_named(named: dict) -> ElevatorArgs:
    """The API's dict form: defaults, then the preset's values, then the fields given."""
    unknown = sorted(set(named) - set(ARG_NAMES))
    if unknown:
        raise SettingsError(unknown[0], f"unknown setting; the settings are: {', '.join(ARG_NAMES)}")
    values = {name: _coerce(name, default) for name, default in ARGS}
    values.update(PRESETS[_preset(_coerce("preset", named.get("preset", DEFAULT_PRESET)))])
    values.update({name: _coerce(name, value) for name, value in named.items()})
    return _build(values)


def from_positional(args) -> ElevatorArgs:
    """The UI's positional values (missing trailing values take their defaults)."""
    args = list(args)
    if args and isinstance(args[0], dict):
        return from_named(args[0])
    values = {name: _coerce(name, default) for name, default in ARGS}
    values.update({name: _coerce(name, value) for (name, _), value in zip(ARGS, args)})
    return _build(values)


def is_enabled(args) -> bool:
    """Cheap check used before full parsing (a bad dict still counts as 'asked for')."""
    args = list(args)
    if not args:
        return False
    enable = args[0].get("enable", False) if isinstance(args[0], dict) else args[0]
    return enable is True or (isinstance(enable, str) and enable.strip().lower() == "true")


# ------------------------------------------------------------------------------------ infotext

INFOTEXT_KEY = "VideoElevator"


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
