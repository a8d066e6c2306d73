"""The adapter's arguments (lib_elevator/webui/args.py): the table of controls and what comes from
it (the positional list in UI order, the single dict of named settings, coercion by kind, refusal
with the field named, `is_enabled`, the infotext value).

args.py is pure (no host modules), so these tests need no stand-in."""

import json
import math
import os
import re

import pytest

from lib_elevator.settings import COMPAT_MODES, PRESETS, Settings, SettingsError
from lib_elevator.webui import args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = Settings()
# The positional order API clients rely on (README, API section): new settings are only appended.
POSITIONAL = (
    "enable", "t2v_model", "frames", "preset", "refine_points", "t2v_steps", "t2v_guidance", "noise_mix",
    "filter_method", "filter_spatial", "filter_temporal", "anchor", "inversion_steps", "pnp", "t2v_prompt",
    "t2v_negative_prompt", "fps", "formats", "inversion_prompt", "compat", "t2v_fps", "t2v_window", "t2v_overlap",
    "frame_chunk",
)  # fmt: skip
# A value for every argument, none of them its default, in UI order.
CUSTOM = {
    "enable": True,
    "t2v_model": "zeroscope",
    "frames": 6,
    "preset": "AnimateLCM-like",
    "refine_points": "20%,40%",
    "t2v_steps": 3,
    "t2v_guidance": 4.5,
    "noise_mix": 0.25,
    "filter_method": "butterworth",
    "filter_spatial": 0.5,
    "filter_temporal": 0.3,
    "anchor": "first_prev",
    "inversion_steps": 4,
    "pnp": False,
    "t2v_prompt": " a boat, at sea ",
    "t2v_negative_prompt": "blur",
    "fps": 12,
    "formats": ["GIF", "PNG"],
    "inversion_prompt": "negative",
    "compat": "authors",
    "t2v_fps": 16,
    "t2v_window": 12,
    "t2v_overlap": 3,
    "frame_chunk": 2,
}


def test_the_positional_order_is_the_documented_one():
    assert args.ARG_NAMES == POSITIONAL == tuple(CUSTOM)
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    paragraph = readme[readme.index("one object of named settings") : readme.index("Missing names take")]
    documented = [name for name in re.findall(r"`(\w+)`", paragraph) if name in args.DEFAULTS]
    assert tuple(documented) == POSITIONAL


def test_the_table_is_consistent():
    assert len(set(args.ARG_NAMES)) == len(args.CONTROLS)
    assert args.CONTROLS[0].name == "enable" and args.CONTROLS[0].kind == args.ACCORDION
    assert [c.kind for c in args.CONTROLS].count(args.ACCORDION) == 1
    for control in args.CONTROLS:
        assert control.kind in args.KINDS and control.section in args.SECTIONS, control.name
        assert control.label, control.name  # /sdapi/v1/script-info describes arguments by label
        assert control.tip or control.kind == args.ACCORDION, control.name
        if control.kind in (args.INT_SLIDER, args.FLOAT_SLIDER):
            assert control.minimum <= control.default <= control.maximum and control.step > 0, control.name
        if control.kind in (args.DROPDOWN, args.RADIO) and not control.host_choices:
            assert control.default in control.choices, control.name
        if control.kind == args.CHECKBOX_GROUP:
            assert set(control.default) <= set(control.choices), control.name
        if control.name in args.SETTING_NAMES:  # the table's defaults are Settings' defaults
            expected = getattr(DEFAULT, control.name)
            assert control.default == (list(expected) if isinstance(expected, tuple) else expected), control.name
    assert set(args.ARG_NAMES) - set(args.SETTING_NAMES) == {"enable", "t2v_model", "preset"}
    assert args.DEFAULTS["enable"] is False and args.DEFAULTS["preset"] == args.DEFAULT_PRESET
    assert args.PRESET_FIELDS == tuple(PRESETS[args.DEFAULT_PRESET])
    assert set(args.PRESET_FIELDS) <= set(args.ARG_NAMES)
    assert args.PASTE_NAMES == tuple(f"VideoElevator {name}" for name in args.ARG_NAMES)


@pytest.mark.parametrize("control", args.CONTROLS, ids=lambda c: c.name)
def test_every_control_parses_from_its_default(control):
    parsed = args.from_named({control.name: control.default})
    assert parsed.public()[control.name] == control.default
    values = [c.default for c in args.CONTROLS]
    assert args.from_positional(values) == args.from_positional([])


def test_full_positional_list_sets_every_field():
    parsed = args.from_positional(list(CUSTOM.values()))
    assert parsed.enable is True and parsed.t2v_model == "zeroscope" and parsed.preset == "AnimateLCM-like"
    expected = {**CUSTOM, "t2v_prompt": " a boat, at sea ", "formats": ["GIF", "PNG"]}
    assert parsed.public() == expected
    s = parsed.settings
    assert (s.frames, s.t2v_steps, s.inversion_steps, s.fps) == (6, 3, 4, 12)
    assert s.formats == ("GIF", "PNG") and s.anchor == "first_prev" and s.pnp is False and s.compat == "authors"


def test_missing_trailing_positions_take_the_defaults_and_extra_ones_are_ignored():
    parsed = args.from_positional([True, "zeroscope", 8])
    assert parsed.enable and parsed.settings == DEFAULT.replace(frames=8)
    assert parsed.preset == args.DEFAULT_PRESET
    longer = args.from_positional([*CUSTOM.values(), "one too many", 42])
    assert longer == args.from_positional(list(CUSTOM.values()))
    assert args.from_positional([]) == args.from_positional([False])
    assert args.from_positional([]).settings == DEFAULT
    # a client of the 19 arguments before `compat` existed keeps working, with compat off
    before_compat = args.from_positional(list(CUSTOM.values())[:19])
    assert before_compat.settings == args.from_positional(list(CUSTOM.values())).settings.replace(
        compat="none", t2v_fps=args.DEFAULTS["t2v_fps"], t2v_window=0, t2v_overlap=4, frame_chunk=0
    )


@pytest.mark.parametrize("mode", COMPAT_MODES)
def test_compat_is_accepted_in_every_form(mode):
    named = args.from_named({"enable": True, "compat": mode})
    index = args.ARG_NAMES.index("compat")
    positional = args.from_positional([*(c.default for c in args.CONTROLS[:index]), mode])
    assert named.settings.compat == positional.settings.compat == mode
    assert args.from_positional([{"compat": f" {mode} "}]).settings.compat == mode
    assert json.loads(args.to_infotext(named))["compat"] == mode
    assert args.from_named({}).settings.compat == "none"


def test_positional_form_does_not_reapply_the_preset():
    # The UI fills the preset's fields itself; positional values are taken as they are.
    parsed = args.from_positional([True, "m", 16, "AnimateLCM-like"])
    assert parsed.preset == "AnimateLCM-like"
    assert parsed.settings.refine_points == DEFAULT.refine_points
    assert parsed.settings.t2v_steps == DEFAULT.t2v_steps


def test_dict_form_missing_names_take_the_defaults():
    parsed = args.from_positional([{"enable": True, "t2v_model": "m"}])
    assert parsed.enable and parsed.t2v_model == "m" and parsed.settings == DEFAULT
    assert args.from_positional([{}]).enable is False


def test_dict_form_applies_the_preset_then_the_explicit_fields():
    preset = PRESETS["AnimateLCM-like"]
    parsed = args.from_positional([{"enable": True, "preset": "AnimateLCM-like"}])
    assert {name: getattr(parsed.settings, name) for name in preset} == preset
    overridden = args.from_positional([{"preset": "AnimateLCM-like", "t2v_steps": 3, "noise_mix": 2}])
    assert overridden.settings.t2v_steps == 3 and overridden.settings.noise_mix == 2.0
    assert overridden.settings.t2v_guidance == preset["t2v_guidance"]
    assert overridden.settings.refine_points == preset["refine_points"]


def test_dict_in_the_first_slot_ignores_the_ui_defaults_after_it():
    # What the host sends for `"args": [{...}]`: the other slots hold UI defaults, never read.
    parsed = args.from_positional([{"enable": True, "frames": 4}, False, "other", 99, "bad preset"])
    assert parsed.enable and parsed.settings.frames == 4 and parsed.preset == args.DEFAULT_PRESET


def test_dict_form_equals_the_positional_form():
    named = args.from_positional([dict(CUSTOM)])
    positional = args.from_positional(list(CUSTOM.values()))
    assert named == positional


@pytest.mark.parametrize(
    "name, given, expected",
    [
        ("frames", 16.0, 16),
        ("frames", 5, 5),
        ("t2v_steps", 2.0, 2),
        ("fps", 24.0, 24),
        ("inversion_steps", 0.0, 0),
        ("t2v_guidance", 7, 7.0),
        ("noise_mix", 0, 0.0),
        ("filter_spatial", 1.25, 1.25),
        ("enable", "True", True),
        ("pnp", " false ", False),
        ("pnp", True, True),
        ("refine_points", " 45,35 ", "45,35"),
        ("t2v_prompt", "  keep my spaces ", "  keep my spaces "),
        ("t2v_model", None, ""),
        ("formats", "mp4, gif", ("MP4", "GIF")),
        ("formats", ["gif", "GIF", " webp "], ("GIF", "WEBP")),
        ("formats", ("png",), ("PNG",)),
    ],
)
def test_values_are_coerced(name, given, expected):
    parsed = args.from_named({name: given})
    value = {"enable": parsed.enable, "t2v_model": parsed.t2v_model}.get(name, None)
    if value is None:
        value = getattr(parsed.settings, name)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    "name, value",
    [
        ("frames", "16.5"),
        ("frames", 16.5),
        ("frames", "16"),
        ("frames", True),
        ("frames", None),
        ("frames", [16]),
        ("frames", 1),
        ("frames", 129),
        ("t2v_steps", 0),
        ("fps", 0),
        ("fps", 61),
        ("inversion_steps", -1),
        ("t2v_guidance", "7.5"),
        ("t2v_guidance", -1),
        ("noise_mix", False),
        ("noise_mix", -0.5),
        ("filter_spatial", 0),
        ("filter_temporal", -1.0),
        ("filter_method", "median"),
        ("anchor", "last"),
        ("refine_points", "later"),
        ("refine_points", 10),
        ("inversion_prompt", "positive"),
        ("compat", "Authors"),
        ("compat", "full"),
        ("compat", True),
        ("enable", 1),
        ("enable", "yes"),
        ("pnp", None),
        ("t2v_prompt", 5),
        ("preset", "Fast"),
        ("formats", "AVI"),
        ("formats", ""),
        ("formats", []),
        ("formats", 5),
        ("formats", {"MP4": True}),
    ],
)
def test_bad_values_are_refused_naming_the_field(name, value):
    with pytest.raises(SettingsError) as named:
        args.from_named({name: value})
    assert named.value.field == name
    assert str(named.value).startswith(f"{name}: ")
    # the same value in its UI position is refused the same way
    position = args.ARG_NAMES.index(name)
    values = [CUSTOM[n] for n in args.ARG_NAMES]
    values[position] = value
    with pytest.raises(SettingsError) as positional:
        args.from_positional(values)
    assert positional.value.field == name


# Values of the wrong type for each kind of control (range and meaning are checked above).
BAD_BY_KIND = {
    args.ACCORDION: [1, "yes", None],
    args.CHECKBOX: [1, "yes", None],
    args.INT_SLIDER: [2.5, "16", True, None, [16], math.nan],
    args.FLOAT_SLIDER: ["7.5", False, None, [1.0], math.inf],
    args.TEXTBOX: [5, ["text"], True],
    args.DROPDOWN: [5, ["x"], "no such choice"],
    args.RADIO: [5, None, "no such choice"],
    args.CHECKBOX_GROUP: ["AVI", "", [], 5, {"MP4": True}, None],
}
WRONG_TYPES = [
    pytest.param(control.name, value, id=f"{control.name}-{value!r}")
    for control in args.CONTROLS
    for value in BAD_BY_KIND[control.kind]
    if not (value == "no such choice" and control.host_choices)  # the host's list is checked when a job runs
]


@pytest.mark.parametrize("name, value", WRONG_TYPES)
def test_values_of_the_wrong_kind_are_refused_naming_the_field(name, value):
    with pytest.raises(SettingsError) as named:
        args.from_named({name: value})
    assert named.value.field == name
    values = [CUSTOM[n] for n in args.ARG_NAMES]
    values[args.ARG_NAMES.index(name)] = value
    with pytest.raises(SettingsError) as positional:
        args.from_positional(values)
    assert positional.value.field == name


def test_unknown_names_are_refused_naming_the_first_one():
    with pytest.raises(SettingsError) as error:
        args.from_named({"enable": True, "frame": 4})
    assert error.value.field == "frame" and "frames" in str(error.value)
    with pytest.raises(SettingsError) as error:
        args.from_positional([{"zzz": 1, "aaa": 2, "frames": 4}])
    assert error.value.field == "aaa"


@pytest.mark.parametrize(
    "name, value",
    [
        ("frames", float("inf")),
        ("frames", float("nan")),
        pytest.param("fps", 10**400, id="fps-10**400"),
        ("noise_mix", float("inf")),
        ("t2v_guidance", float("inf")),
    ],
)
def test_non_finite_numbers_are_refused_naming_the_field(name, value):
    with pytest.raises(SettingsError) as error:
        args.from_named({name: value})
    assert error.value.field == name


def test_is_enabled():
    assert args.is_enabled([]) is False
    assert args.is_enabled([True, "m"]) is True
    assert args.is_enabled((True,)) is True
    assert args.is_enabled([False, "m"]) is False
    assert args.is_enabled([1]) is False  # positional: only a real True turns it on
    assert args.is_enabled([{"enable": True}]) is True
    assert args.is_enabled([{}]) is False
    assert args.is_enabled([{"enable": False, "frames": 4}]) is False
    # a bad dict still counts as asked for, so its error reaches the user
    assert args.is_enabled([{"enable": True, "frames": "many"}]) is True


def test_is_enabled_agrees_with_parsing_for_text_booleans():
    for text in ("false", "False", " false "):
        assert args.from_positional([{"enable": text}]).enable is False
        assert args.is_enabled([{"enable": text}]) is False


def test_infotext_value_holds_every_setting_but_enable():
    parsed = args.from_positional(list(CUSTOM.values()))
    text = args.to_infotext(parsed)
    values = json.loads(text)
    assert "enable" not in values
    assert values == {name: value for name, value in CUSTOM.items() if name != "enable"}
    restored = args.from_infotext(text)
    assert restored == {**values, "enable": True}
    assert args.from_positional([restored]) == parsed


@pytest.mark.parametrize("text", ["", "not json", "[1, 2]", "42", None, '"text"'])
def test_infotext_that_is_not_ours_gives_nothing(text):
    assert args.from_infotext(text) == {}


def test_infotext_drops_unknown_names():
    assert args.from_infotext('{"frames": 4, "future_setting": 1}') == {"frames": 4, "enable": True}
