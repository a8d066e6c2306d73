"""VideoElevator axes for the host's "X/Y/Z plot" script (AUTOMATIC1111 and Forge: scripts/xyz_grid.py).

Registered the way the host expects extensions to add axes: `AxisOption`s appended to that script
module's `axis_options`. An axis value is kept on the cell's `p` (the plot makes a shallow copy of `p`
per cell) and `job.before_process` applies it over the accordion's values; values are checked up front
(`confirm`) with the accordion's own coercion, so a bad one stops the plot with the field's message.

Each cell is a video: the plot's grid shows each cell's first frame (the host draws one image per cell,
and a strip of every frame would make each cell F times wider than its labels); every cell's video is
written and listed in the response's `info` (outputs.report accumulates them over the cells).
"""

from __future__ import annotations

from lib_elevator.errors import UserError
from lib_elevator.webui import args as ve_args
from lib_elevator.webui.refusal import user_error

ATTR = "_videoelevator_xyz"
AXES = ("enable", "t2v_model", "frames", "preset", "refine_points", "t2v_steps", "t2v_guidance", "noise_mix",
        "filter_method", "filter_spatial", "filter_temporal", "anchor", "inversion_steps", "pnp", "fps",
        "t2v_window", "t2v_overlap", "frame_chunk", "compat")
LABEL_PREFIX = "[VideoElevator] "


def overrides(p) -> dict:
    """The axis values of this cell (name -> value)."""
    return dict(getattr(p, ATTR, None) or {})


def apply_axis(name: str):
    def apply(p, value, values):
        setattr(p, ATTR, {**overrides(p), name: value})  # a new dict: the cells share the original's

    return apply


def confirm_axis(name: str):
    """The plot's check of an axis before any cell runs: each value as the accordion would take it, with
    the other settings at their defaults; an error about this setting stops the plot with its message (an
    HTTP 422 through the API). Errors about a combination with other settings are left to the cell, which
    checks them against the accordion's actual values."""

    def confirm(p, values):
        for value in values:
            try:
                ve_args.from_named({"enable": True, name: value} if name != "enable" else {name: value})
            except UserError as error:
                if error.field == name:
                    raise user_error(p, error) from error

    return confirm


def axis_type(control):
    if control.kind == ve_args.INT_SLIDER:
        return int
    if control.kind == ve_args.FLOAT_SLIDER:
        return float
    return str


def axis_choices(control):
    if control.kind in (ve_args.ACCORDION, ve_args.CHECKBOX):
        return lambda: ["True", "False"]
    if control.host_choices:
        from lib_elevator.webui import models

        return models.model_names
    if control.choices:
        return lambda: list(control.choices)
    return None


def xyz_module():
    """The host's X/Y/Z plot script module, or None (not loaded, or renamed)."""
    from modules import scripts

    for data in scripts.scripts_data:
        if data.script_class.__module__ in ("xyz_grid.py", "scripts.xyz_grid") and hasattr(data, "module"):
            return data.module
    return None


def register(*_args) -> bool:
    """Add the axes (once: a reload of the scripts finds them there). Returns whether they are there."""
    xyz = xyz_module()
    if xyz is None:
        return False
    labels = {option.label for option in xyz.axis_options}
    for name in AXES:
        control = ve_args.BY_NAME[name]
        label = LABEL_PREFIX + ("Enabled" if name == "enable" else control.label)
        if label in labels:
            continue
        xyz.axis_options.append(xyz.AxisOption(label, axis_type(control), apply_axis(name),
                                               confirm=confirm_axis(name), choices=axis_choices(control)))
    return True
