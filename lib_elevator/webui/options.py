"""The Settings page section "VideoElevator"."""

from __future__ import annotations

import gradio as gr
from modules import shared

from lib_elevator.settings import FORMATS
from lib_elevator.webui.models import OFFLOAD_POLICIES

SECTION = ("videoelevator", "VideoElevator")


def on_ui_settings() -> None:
    add = shared.opts.add_option
    add("videoelevator_model_dir", shared.OptionInfo(
        "", "Folder of T2V models (empty: models/VideoElevator)", section=SECTION, component_args=shared.hide_dirs))
    add("videoelevator_outdir", shared.OptionInfo(
        "", "Output folder for videos (empty: txt2img-videos beside the txt2img images)", section=SECTION,
        component_args=shared.hide_dirs))
    add("videoelevator_offload", shared.OptionInfo(
        "auto", "Keep the T2V model on the CPU between refine steps", gr.Radio,
        {"choices": list(OFFLOAD_POLICIES)}, section=SECTION).info("auto: with --medvram or --lowvram; always in Forge"))
    add("videoelevator_allow_pickle", shared.OptionInfo(
        False, "Read pickled T2V weights (.ckpt/.pt) with torch's weights-only loader", section=SECTION).info(
        "VideoCrafter2 and some AnimateDiff modules ship only as pickles; without this they are listed as unusable "
        "(or convert them: python -m lib_elevator convert)"))
    add("videoelevator_t2v_ff_chunk", shared.OptionInfo(
        0, "T2V feed-forward chunk size (0 = off)", gr.Slider, {"minimum": 0, "maximum": 64, "step": 1},
        section=SECTION).info("ZeroScope/ModelScope: less GPU memory, same result; the frame count and the latent "
                              "area must be multiples of it (the authors use 8)"))
    add("videoelevator_default_formats", shared.OptionInfo(
        ["MP4"], "Default video outputs", gr.CheckboxGroup, {"choices": list(FORMATS)}, section=SECTION
    ).needs_reload_ui())
    for key in ("videoelevator_model_dir", "videoelevator_outdir"):
        shared.restricted_opts.add(key)
