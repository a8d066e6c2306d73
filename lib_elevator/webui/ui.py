"""The txt2img accordion. Component order = ARGS order = the positional API order."""

from __future__ import annotations

import gradio as gr
from modules import shared
from modules.ui_components import InputAccordion, ToolButton

from lib_elevator.cross_frame import ANCHORS
from lib_elevator.filters import FILTER_METHODS
from lib_elevator.settings import FORMATS, INVERSION_PROMPTS, MAX_FRAMES, PRESETS
from lib_elevator.webui import args as ve_args
from lib_elevator.webui import models, outputs
from lib_elevator.webui.args import DEFAULTS, INFOTEXT_KEY

TIPS = {
    "t2v_model": "The text-to-video model that refines motion: a ZeroScope/ModelScope diffusers folder, an "
    "AnimateDiff motion module or an AnimateLCM folder, from models/VideoElevator (and "
    "models/text2video, models/AnimateDiff). Your checkpoint and LoRAs draw the frames.",
    "frames": "Frames of the video; they are the batch of the job (Batch count = number of videos).",
    "preset": "Fills the advanced settings with the paper's values for ZeroScope-like models (50 steps) or "
    "AnimateLCM (30 steps).",
    "refine_points": "When the T2V model refines motion, as in the paper: '10%,30%,50%,70%' of a DDIM schedule of "
    "your step count, or steps remaining ('45,35,25,15' of 50). Other samplers refine at the step "
    "with the same noise level (Karras schedules reach low noise early).",
    "t2v_steps": "N: denoising steps the T2V model takes at each refine point (on its 50-step grid).",
    "t2v_guidance": "Classifier-free guidance of the T2V model (paper 7.5; AnimateLCM 2.0).",
    "noise_mix": "alpha: how much initial noise all frames share (0 = independent frames).",
    "filter_method": "Low-pass filter over time applied before each refine except the last (removes flicker).",
    "filter_spatial": "Spatial cut-off d_s of the filter (higher passes more detail).",
    "filter_temporal": "Temporal cut-off d_t (lower = smoother motion, less flicker).",
    "anchor": "Cross-frame attention: frames attend to the first frame, or to the first and the previous one.",
    "inversion_steps": "DDIM inversion steps back to the sampler's noise level: 0 = every step of the schedule "
    "(the paper); fewer is faster (1 step: about the cost of a plain batch) and less exact.",
    "pnp": "PnP-inversion correction after each refine (the authors' default; one extra UNet call per step). "
    "It follows the full inversion path: with fewer inversion steps it has (almost) nothing to correct.",
    "t2v_prompt": "Prompt for the T2V model (empty = the main prompt, without weights).",
    "t2v_negative_prompt": "Negative prompt for the T2V model (empty = the main negative prompt).",
    "inversion_prompt": "Condition the inversion on the empty prompt, or on the negative prompt as the authors' "
    "code does.",
    "fps": "Frames per second of the video.",
    "formats": "Video files to write (PNG = the frames as a folder of images).",
}


def build(script) -> list:
    """Create the controls; returns them in ARGS order."""
    names = models.model_names()
    default_formats = list(shared.opts.data.get("videoelevator_default_formats", DEFAULTS["formats"]))
    with InputAccordion(False, label="VideoElevator", elem_id="videoelevator") as enable:
        with gr.Row():
            t2v_model = gr.Dropdown(
                label="T2V model",
                choices=names,
                value=names[0] if names else "",
                elem_id="videoelevator_t2v_model",
                info=TIPS["t2v_model"],
            )
            refresh = ToolButton(value="\U0001f504", elem_id="videoelevator_refresh", tooltip="Refresh the T2V models")
        with gr.Row():
            frames = gr.Slider(
                2,
                MAX_FRAMES,
                value=DEFAULTS["frames"],
                step=1,
                label="Frames",
                elem_id="videoelevator_frames",
                info=TIPS["frames"],
            )
            preset = gr.Dropdown(
                label="Preset",
                choices=list(PRESETS),
                value=DEFAULTS["preset"],
                elem_id="videoelevator_preset",
                info=TIPS["preset"],
            )
        with gr.Accordion("Advanced", open=False, elem_id="videoelevator_advanced"):
            refine_points = gr.Textbox(
                label="Refine points",
                value=DEFAULTS["refine_points"],
                elem_id="videoelevator_refine_points",
                info=TIPS["refine_points"],
            )
            with gr.Row():
                t2v_steps = gr.Slider(
                    1,
                    30,
                    value=DEFAULTS["t2v_steps"],
                    step=1,
                    label="T2V steps",
                    elem_id="videoelevator_t2v_steps",
                    info=TIPS["t2v_steps"],
                )
                t2v_guidance = gr.Slider(
                    0.0,
                    20.0,
                    value=DEFAULTS["t2v_guidance"],
                    step=0.5,
                    label="T2V guidance",
                    elem_id="videoelevator_t2v_guidance",
                    info=TIPS["t2v_guidance"],
                )
                noise_mix = gr.Slider(
                    0.0,
                    3.0,
                    value=DEFAULTS["noise_mix"],
                    step=0.05,
                    label="Noise mix",
                    elem_id="videoelevator_noise_mix",
                    info=TIPS["noise_mix"],
                )
            with gr.Row():
                filter_method = gr.Dropdown(
                    label="Filter",
                    choices=list(FILTER_METHODS),
                    value=DEFAULTS["filter_method"],
                    elem_id="videoelevator_filter_method",
                    info=TIPS["filter_method"],
                )
                filter_spatial = gr.Slider(
                    0.05,
                    4.0,
                    value=DEFAULTS["filter_spatial"],
                    step=0.05,
                    label="Filter spatial cut-off",
                    elem_id="videoelevator_filter_spatial",
                    info=TIPS["filter_spatial"],
                )
                filter_temporal = gr.Slider(
                    0.05,
                    2.0,
                    value=DEFAULTS["filter_temporal"],
                    step=0.05,
                    label="Filter temporal cut-off",
                    elem_id="videoelevator_filter_temporal",
                    info=TIPS["filter_temporal"],
                )
            with gr.Row():
                anchor = gr.Radio(
                    label="Anchor",
                    choices=list(ANCHORS),
                    value=DEFAULTS["anchor"],
                    elem_id="videoelevator_anchor",
                    info=TIPS["anchor"],
                )
                inversion_steps = gr.Slider(
                    0,
                    50,
                    value=DEFAULTS["inversion_steps"],
                    step=1,
                    label="Inversion steps (0 = full)",
                    elem_id="videoelevator_inversion_steps",
                    info=TIPS["inversion_steps"],
                )
                pnp = gr.Checkbox(
                    label="PnP correction", value=DEFAULTS["pnp"], elem_id="videoelevator_pnp", info=TIPS["pnp"]
                )
            t2v_prompt = gr.Textbox(
                label="T2V prompt", lines=2, value="", elem_id="videoelevator_t2v_prompt", info=TIPS["t2v_prompt"]
            )
            t2v_negative_prompt = gr.Textbox(
                label="T2V negative prompt",
                lines=1,
                value="",
                elem_id="videoelevator_t2v_negative_prompt",
                info=TIPS["t2v_negative_prompt"],
            )
            inversion_prompt = gr.Radio(
                label="Inversion prompt",
                choices=list(INVERSION_PROMPTS),
                value=DEFAULTS["inversion_prompt"],
                elem_id="videoelevator_inversion_prompt",
                info=TIPS["inversion_prompt"],
            )
        with gr.Row():
            fps = gr.Slider(
                1, 60, value=DEFAULTS["fps"], step=1, label="FPS", elem_id="videoelevator_fps", info=TIPS["fps"]
            )
            formats = gr.CheckboxGroup(
                label="Outputs",
                choices=list(FORMATS),
                value=default_formats,
                elem_id="videoelevator_formats",
                info=TIPS["formats"],
            )
        video = gr.Video(label="Last video", interactive=False, height=320, elem_id="videoelevator_video")

    preset_fields = [refine_points, t2v_steps, t2v_guidance, noise_mix, filter_method, filter_spatial, filter_temporal]
    # `input`, not `change`: only a user's choice fills the fields, not a pasted infotext
    preset.input(
        fn=lambda name: [gr.update(value=PRESETS[name][field]) for field in ve_args.PRESET_FIELDS],
        inputs=[preset],
        outputs=preset_fields,
        show_progress=False,
    )
    refresh.click(fn=lambda: gr.update(choices=models.model_names()), outputs=[t2v_model], show_progress=False)
    script.video_player = video

    controls = [
        enable,
        t2v_model,
        frames,
        preset,
        refine_points,
        t2v_steps,
        t2v_guidance,
        noise_mix,
        filter_method,
        filter_spatial,
        filter_temporal,
        anchor,
        inversion_steps,
        pnp,
        t2v_prompt,
        t2v_negative_prompt,
        fps,
        formats,
        inversion_prompt,
    ]
    script.infotext_fields = [
        (component, f"{INFOTEXT_KEY} {name}") for component, name in zip(controls, ve_args.ARG_NAMES)
    ]
    script.paste_field_names = [f"{INFOTEXT_KEY} {name}" for name in ve_args.ARG_NAMES]
    return controls


def attach_player(script, generation_info) -> None:
    """Show the latest MP4 in the accordion's player whenever a txt2img job finishes (the hidden
    generation-info textbox changes then; gradio 3's Gallery has no change event)."""
    player = getattr(script, "video_player", None)
    if player is None:
        return
    generation_info.change(fn=lambda: outputs.last_video["mp4"], inputs=[], outputs=[player], show_progress=False)


def on_infotext_pasted(infotext: str, params: dict) -> None:
    """Split our one infotext value into the per-control keys `infotext_fields` name."""
    if INFOTEXT_KEY not in params:
        params[f"{INFOTEXT_KEY} enable"] = False  # parameters of a plain image: make a plain image
        return
    for name, value in ve_args.from_infotext(params[INFOTEXT_KEY]).items():
        params[f"{INFOTEXT_KEY} {name}"] = value  # raw types: the paste converts to each control's type
