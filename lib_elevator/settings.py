"""VideoElevator settings shared by the standalone pipeline, the CLI and the WebUI extension.

Names match the WebUI API's public names. Defaults follow the paper (ZeroScope settings): refine
at 10/30/50/70 % of the schedule, N = 8 T2V steps, T2V guidance 7.5, alpha = 1, gaussian filter
d_s = 1.0, d_t = 0.4, full inversion, PnP correction on. The AnimateLCM preset is the authors'
AnimateLCM script: refine at 26, 21, 15, 9 steps remaining of 30 (= 13/30/50/70 %), N = 6,
T2V guidance 2.0, alpha = 0.5, d_t = 0.6 (run it with 30 steps). The VideoCrafter2 preset is the
ZeroScope one with VideoCrafter2's own T2V guidance, 12 (docs/algorithm.md, "VideoCrafter2 backend").
The LaVie preset is the authors' LaVie example: refine at 45, 35, 30, 25, 20, 15 steps remaining of 50,
N = 8, alpha = 1, d_t = 0.5 (docs/algorithm.md, "LaVie backend").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from lib_elevator.cross_frame import ANCHORS
from lib_elevator.errors import SettingsError
from lib_elevator.filters import FILTER_METHODS, FilterSpec
from lib_elevator.schedule import parse_refine_points

FORMATS = ("MP4", "GIF", "WEBP", "PNG")
INVERSION_PROMPTS = ("empty", "negative")
PROJECTION_MODES = ("auto", "always", "never")
# "authors": switch on every documented difference from the authors' code that changes the output
# (docs/algorithm.md lists them), to reproduce their results; "none": this project's choices.
COMPAT_MODES = ("none", "authors")
MAX_FRAMES = 128

PRESETS: dict[str, dict] = {
    "ZeroScope-like": dict(
        refine_points="10%,30%,50%,70%",
        t2v_steps=8,
        t2v_guidance=7.5,
        noise_mix=1.0,
        filter_method="gaussian",
        filter_spatial=1.0,
        filter_temporal=0.4,
    ),
    "AnimateLCM-like": dict(
        refine_points="13%,30%,50%,70%",
        t2v_steps=6,
        t2v_guidance=2.0,
        noise_mix=0.5,
        filter_method="gaussian",
        filter_spatial=1.0,
        filter_temporal=0.6,
    ),
    # VideoCrafter2: no authors' setting exists (their scripts cover ZeroScope, LaVie, AnimateLCM). VC2 is,
    # like ZeroScope, a 1000-step epsilon model sampled with 50 DDIM steps and made for 16 frames, so the
    # paper's ZeroScope refine points, N, alpha and filter carry over unchanged (the filter acts on the image
    # model's frames, alpha on its initial noise). Only the T2V guidance is VC2's own: its official sampler uses
    # 12 (ZeroScope's 7.5 is the paper's single guidance for both models), and the T2V guidance only acts in the
    # T2V steps, so the value VC2 was tuned to be sampled with is the one to start from. Untested on the real
    # weights. Its other defaults are not preset fields: 320x512 (height x width; pass the size) and the fps
    # condition 28 (the backend's default).
    "VideoCrafter2-like": dict(
        refine_points="10%,30%,50%,70%",
        t2v_steps=8,
        t2v_guidance=12.0,
        noise_mix=1.0,
        filter_method="gaussian",
        filter_spatial=1.0,
        filter_temporal=0.4,
    ),
    # LaVie base: the authors' LaVie example. 50 steps, refine at 45, 35, 30, 25, 20, 15 steps remaining,
    # N = 8, alpha = 1, temporal cut-off 0.5. Their 512x512, 16 frames are job settings, not preset fields.
    "LaVie-like": dict(
        refine_points="45,35,30,25,20,15",
        t2v_steps=8,
        t2v_guidance=7.5,
        noise_mix=1.0,
        filter_method="gaussian",
        filter_spatial=1.0,
        filter_temporal=0.5,
    ),
}
# T2I steps the presets were tuned for (VideoCrafter2's official sampler: DDIM, 50 steps)
PRESET_STEPS = {"ZeroScope-like": 50, "AnimateLCM-like": 30, "VideoCrafter2-like": 50, "LaVie-like": 50}


@dataclass(frozen=True)
class Settings:
    frames: int = 16
    refine_points: str = "10%,30%,50%,70%"
    t2v_steps: int = 8
    t2v_guidance: float = 7.5
    noise_mix: float = 1.0
    filter_method: str = "gaussian"
    filter_spatial: float = 1.0
    filter_temporal: float = 0.4
    anchor: str = "first"
    inversion_steps: int = 0  # 0 = full: every level of the sampling schedule below the target
    pnp: bool = True
    inversion_prompt: str = "empty"  # "negative" reproduces the authors' code
    t2v_prompt: str = ""  # empty: the main prompt
    t2v_negative_prompt: str = ""  # empty: the main negative prompt
    t2v_grid_steps: int = 50  # T2V steps are 1000 / 50 = 20 timesteps apart, as in the paper
    latent_projection: str = "auto"
    compat: str = "none"
    t2v_fps: int = 28  # the frame rate a T2V model is conditioned on (VideoCrafter2); the others ignore it
    t2v_window: int = 0  # frames the T2V model sees at once; 0 = its native length (longer videos: windows)
    t2v_overlap: int = 4  # frames shared by neighbouring windows, blended linearly
    frame_chunk: int = 0  # T2I frames per UNet call, sharing the anchor; 0 = auto (all on a CPU, by free memory on a GPU)
    fps: int = 8
    formats: tuple[str, ...] = field(default=("MP4",))

    def replace(self, **changes) -> Settings:
        return dataclasses.replace(self, **changes)

    def with_preset(self, name: str) -> Settings:
        if name not in PRESETS:
            raise SettingsError("preset", f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return self.replace(**PRESETS[name])

    @property
    def inverts_with_negative_prompt(self) -> bool:
        """The inversion's text conditioning: the negative prompt (the authors' choice) or the empty one."""
        return self.inversion_prompt == "negative" or self.compat == "authors"

    @property
    def inversion_anchor_groups(self) -> int:
        """Anchor groups in the inversion's batch of F frames: 1 (every frame attends to frame 0), or 2
        with compat="authors" (their processor splits every batch in two: frames from F/2 on attend
        to frame F/2)."""
        return 2 if self.compat == "authors" else 1

    def t2v_windows(self, native_frames: int) -> tuple[int, int]:
        """(window, overlap) of the T2V model's calls: the setting, or the model's native length; an
        overlap that does not fit a short native window is cut to half of it."""
        window = self.t2v_window or native_frames
        return window, min(self.t2v_overlap, window // 2 if not self.t2v_window else window - 1)

    def filter_spec(self) -> FilterSpec:
        convention = "authors" if self.compat == "authors" else "exact"
        return FilterSpec(self.filter_method, float(self.filter_spatial), float(self.filter_temporal),
                          convention=convention)

    def validate(self) -> Settings:
        """Check every field on its own (schedule-dependent checks happen when a job is planned)."""

        def need(ok: bool, name: str, message: str):
            if not ok:
                raise SettingsError(name, message)

        need(
            isinstance(self.frames, int) and 2 <= self.frames <= MAX_FRAMES,
            "frames",
            f"a video needs between 2 and {MAX_FRAMES} frames; got {self.frames!r}",
        )
        try:
            parse_refine_points(self.refine_points)
        except ValueError as e:
            raise SettingsError("refine_points", str(e)) from None
        need(
            isinstance(self.t2v_steps, int) and self.t2v_steps >= 1,
            "t2v_steps",
            f"must be a whole number >= 1; got {self.t2v_steps!r}",
        )
        need(self.t2v_guidance >= 0, "t2v_guidance", f"must be >= 0; got {self.t2v_guidance!r}")
        need(self.noise_mix >= 0, "noise_mix", f"must be >= 0; got {self.noise_mix!r}")
        need(
            self.filter_method in FILTER_METHODS,
            "filter_method",
            f"must be one of {', '.join(FILTER_METHODS)}; got {self.filter_method!r}",
        )
        need(self.filter_spatial > 0, "filter_spatial", f"must be > 0; got {self.filter_spatial!r}")
        need(self.filter_temporal > 0, "filter_temporal", f"must be > 0; got {self.filter_temporal!r}")
        need(self.anchor in ANCHORS, "anchor", f"must be one of {', '.join(ANCHORS)}; got {self.anchor!r}")
        need(
            isinstance(self.inversion_steps, int) and self.inversion_steps >= 0,
            "inversion_steps",
            f"must be 0 (full) or a whole number of steps; got {self.inversion_steps!r}",
        )
        need(isinstance(self.pnp, bool), "pnp", f"must be true or false; got {self.pnp!r}")
        need(
            self.inversion_prompt in INVERSION_PROMPTS,
            "inversion_prompt",
            f"must be one of {', '.join(INVERSION_PROMPTS)}; got {self.inversion_prompt!r}",
        )
        need(isinstance(self.t2v_prompt, str), "t2v_prompt", "must be text")
        need(isinstance(self.t2v_negative_prompt, str), "t2v_negative_prompt", "must be text")
        need(
            isinstance(self.t2v_grid_steps, int) and 1 <= self.t2v_grid_steps <= 1000,
            "t2v_grid_steps",
            f"must be between 1 and 1000; got {self.t2v_grid_steps!r}",
        )
        need(
            self.latent_projection in PROJECTION_MODES,
            "latent_projection",
            f"must be one of {', '.join(PROJECTION_MODES)}; got {self.latent_projection!r}",
        )
        need(
            self.compat in COMPAT_MODES,
            "compat",
            f"must be one of {', '.join(COMPAT_MODES)}; got {self.compat!r}",
        )
        need(
            self.compat != "authors" or self.frames % 2 == 0,
            "frames",
            f"compat=authors needs an even frame count (the authors' inversion splits the frames in two halves); "
            f"got {self.frames!r}",
        )
        need(
            isinstance(self.t2v_fps, int) and 1 <= self.t2v_fps <= 60,
            "t2v_fps",
            f"must be between 1 and 60; got {self.t2v_fps!r}",
        )
        need(
            isinstance(self.t2v_window, int) and (self.t2v_window == 0 or 2 <= self.t2v_window <= MAX_FRAMES),
            "t2v_window",
            f"must be 0 (the T2V model's native length) or between 2 and {MAX_FRAMES} frames; got {self.t2v_window!r}",
        )
        need(
            isinstance(self.t2v_overlap, int) and self.t2v_overlap >= 0
            and (self.t2v_window == 0 or self.t2v_overlap < self.t2v_window),
            "t2v_overlap",
            f"must be 0 or more and less than the window ({self.t2v_window}); got {self.t2v_overlap!r}",
        )
        need(
            isinstance(self.frame_chunk, int) and 0 <= self.frame_chunk <= MAX_FRAMES,
            "frame_chunk",
            f"must be 0 (auto) or between 1 and {MAX_FRAMES} frames; got {self.frame_chunk!r}",
        )
        need(isinstance(self.fps, int) and 1 <= self.fps <= 60, "fps", f"must be between 1 and 60; got {self.fps!r}")
        need(
            len(self.formats) > 0 and all(f in FORMATS for f in self.formats),
            "formats",
            f"must be a non-empty list of {', '.join(FORMATS)}; got {list(self.formats)!r}",
        )
        return self
