"""What a txt2img job must look like for VideoElevator to run it (pure; shared by the UI hooks and
the API request check, so both refuse the same things with the same words)."""

from __future__ import annotations

import re

from lib_elevator.settings import SettingsError

# Samplers that cannot be resumed from a replaced latent part-way through their schedule:
# DPM fast/adaptive take only (sigma_min, sigma_max, n), UniPC builds its own schedule, and
# Restart derives its restart list from the whole schedule.
UNSEGMENTABLE_SAMPLERS = {"DPM fast", "DPM adaptive", "UniPC", "Restart"}
_AND = re.compile(r"\bAND\b")


def check_job(sampler_name: str | None, prompt, negative_prompt="", refiner: str | None = None,
              hr_prompt=None) -> None:
    """Raise SettingsError for what VideoElevator cannot do in this job (`hr_prompt`: the hires-fix
    prompt when hires fix is on; its pass runs with cross-frame attention too)."""
    if sampler_name in UNSEGMENTABLE_SAMPLERS:
        raise SettingsError(
            "sampler_name",
            f"VideoElevator cannot resume the {sampler_name} sampler part-way through its schedule; choose "
            "Euler, Euler a, DDIM, DPM++ 2M, DPM++ SDE, Heun, LMS or another sampler",
        )
    for field, value in (("prompt", prompt), ("hr_prompt", hr_prompt)):
        texts = value if isinstance(value, list) else [value or ""]
        if any(_AND.search(text or "") for text in texts):
            raise SettingsError(
                field,
                "prompts combined with AND give every frame several UNet rows, which breaks the frame "
                "grouping of cross-frame attention; write the prompt without AND",
            )
    if refiner and refiner not in ("None", ""):
        raise SettingsError(
            "refiner_checkpoint",
            "the refiner switches to another checkpoint mid-sampling, which VideoElevator does not patch; "
            "turn the refiner off",
        )
