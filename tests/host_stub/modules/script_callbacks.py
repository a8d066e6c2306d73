"""Stand-in of `modules.script_callbacks`: registration only; `callbacks[category]` lists the
registered functions in order, and the parameter objects of the two CFG callbacks."""

from __future__ import annotations

from collections import defaultdict

callbacks: dict[str, list] = defaultdict(list)


class CFGDenoiserParams:
    def __init__(
        self, x, image_cond, sigma, sampling_step, total_sampling_steps, text_cond, text_uncond, denoiser=None
    ):
        self.x, self.image_cond, self.sigma = x, image_cond, sigma
        self.sampling_step, self.total_sampling_steps = sampling_step, total_sampling_steps
        self.text_cond, self.text_uncond, self.denoiser = text_cond, text_uncond, denoiser


class CFGDenoisedParams:
    def __init__(self, x, sampling_step, total_sampling_steps, inner_model):
        self.x, self.sampling_step, self.total_sampling_steps, self.inner_model = (
            x,
            sampling_step,
            total_sampling_steps,
            inner_model,
        )


def _register(category):
    def on(callback, *, name=None):
        callbacks[category].append(callback)

    on.__name__ = f"on_{category}"
    return on


on_app_started = _register("app_started")
on_model_loaded = _register("model_loaded")
on_ui_settings = _register("ui_settings")
on_cfg_denoiser = _register("cfg_denoiser")
on_cfg_denoised = _register("cfg_denoised")
on_cfg_after_cfg = _register("cfg_after_cfg")
on_infotext_pasted = _register("infotext_pasted")
on_script_unloaded = _register("script_unloaded")
on_before_component = _register("before_component")
on_after_component = _register("after_component")
on_before_ui = _register("before_ui")


def cfg_denoiser_callback(params):
    for callback in callbacks["cfg_denoiser"]:
        callback(params)


def cfg_denoised_callback(params):
    for callback in callbacks["cfg_denoised"]:
        callback(params)


def infotext_pasted_callback(infotext: str, params: dict):
    for callback in callbacks["infotext_pasted"]:
        callback(infotext, params)
