"""The interface every text-to-video backend implements, and the SDEdit loop they share.

A backend loads its weights, encodes prompts with its own text encoder and predicts noise for a
video latent. Denoising N steps from a noise level (SDEdit) is the same for all backends and lives
here, with the two step rules the supported models use: DDIM (ZeroScope/ModelScope, AnimateDiff)
and LCM (AnimateLCM). Every random draw goes through the caller's NoiseSource.
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch

from lib_elevator.dtypes import working_dtype
from lib_elevator.latent_space import LatentSpace
from lib_elevator.noise import NoiseSource
from lib_elevator.windows import in_windows


@dataclass
class PromptPair:
    """Text embeddings of the T2V model for one video: cond and uncond, each (1, tokens, dim)."""

    cond: torch.Tensor
    uncond: torch.Tensor


class T2VBackend(ABC):
    """A loaded T2V model.

    Subclasses set: `kind`, `name`, `latent_space`, `alphas_cumprod` (its training table),
    `prediction_type` ("epsilon" or "v_prediction"), `sampler` ("ddim" or "lcm"), `vae` (an
    AutoencoderKL for latent-space projection, or None), `device`, `dtype`.
    """

    kind: str = "t2v"
    name: str = ""
    latent_space: LatentSpace
    alphas_cumprod: torch.Tensor
    prediction_type: str = "epsilon"
    sampler: str = "ddim"
    vae = None
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    # Backends whose UNet can run its feed-forward layers in chunks (`enable_forward_chunking`).
    supports_forward_chunking: bool = False
    # The frame rate the model is conditioned on, for models that take one (VideoCrafter2); None otherwise.
    fps: int | None = None
    # The clip length the model was trained on: longer videos are refined in overlapping windows of it.
    native_frames: int = 16
    # The most frames one call can take (a motion module's positions); None: no limit.
    max_frames: int | None = None

    @abstractmethod
    def encode_prompt(self, prompt: str, negative_prompt: str, device: torch.device | None = None) -> PromptPair:
        """Embed prompt and negative prompt with the T2V model's own text encoder. `device`: where to
        run it when it sits elsewhere (an offloaded model's is on the CPU, where float16 is slow); it is
        put back afterwards and the embeddings stay on `device`."""

    @abstractmethod
    def model_output(self, video: torch.Tensor, timestep: int, context: torch.Tensor) -> torch.Tensor:
        """Raw UNet output for DDPM-form video latents (B, C, F, h, w) at an integer timestep with
        text context (B, tokens, dim)."""

    @abstractmethod
    def to(self, device=None, dtype=None) -> T2VBackend:
        """Move the model (offloading = `.to("cpu")`)."""

    def signal_scale(self, timestep: int) -> float:
        """s_t of a model trained with a rescaled signal, x_t = s_t sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
        (VideoCrafter2); 1 for the others. The UNet never sees it: noising and the DDIM update apply it."""
        return 1.0

    @property
    def noise_level_table(self) -> torch.Tensor:
        """The abar table whose sigmas are this model's noise levels, to match the T2I sampler's sigma
        with a timestep: `alphas_cumprod`, or for a rescaled signal the abar with
        sigma_t = sqrt(1 - abar_t) / (s_t sqrt(abar_t)), the noise-to-signal ratio the model sees."""
        table = self.alphas_cumprod
        scales = torch.tensor([self.signal_scale(t) for t in range(len(table))], dtype=table.dtype)
        if bool((scales == 1).all()):
            return table
        signal = table * scales**2
        return signal / (signal + 1 - table)

    # ------------------------------------------------------------------------------------------

    def predict_noise(self, frames: torch.Tensor, timestep: int, prompts: PromptPair, guidance: float,
                      window: int | None = None, overlap: int = 0) -> torch.Tensor:
        """Guided noise prediction for one video given as frames (F, C, h, w), DDPM form; a video longer
        than `window` frames in overlapping windows, blended (lib_elevator/windows.py)."""
        if window is not None and frames.shape[0] > window:
            return in_windows(lambda part: self.predict_noise(part, timestep, prompts, guidance), frames, window,
                              overlap)
        video = frames.to(self.device, self.dtype).permute(1, 0, 2, 3).unsqueeze(0)  # (1, C, F, h, w)
        if guidance == 1.0:
            out = self.model_output(video, timestep, prompts.cond.to(self.device, self.dtype))
        else:
            context = torch.cat([prompts.uncond, prompts.cond]).to(self.device, self.dtype)
            uncond, cond = self.model_output(torch.cat([video, video]), timestep, context).chunk(2)
            out = uncond + guidance * (cond - uncond)
        out = out.squeeze(0).permute(1, 0, 2, 3).to(working_dtype(frames))  # (F, C, h, w)
        if self.prediction_type == "v_prediction":
            a = self.alphas_cumprod[timestep].item()
            x = frames.to(out.dtype)
            out = math.sqrt(a) * out + math.sqrt(1 - a) * x
        return out

    def denoise(
        self,
        clean: torch.Tensor,
        start: int,
        timesteps,
        prompts: PromptPair,
        guidance: float,
        noise: NoiseSource,
        before_call: Callable[[], None] | None = None,
        unused_draw: bool = False,
        window: int | None = None,
        overlap: int = 0,
    ) -> torch.Tensor:
        """SDEdit: noise the clean frames (F, C, h, w) to timestep `start` of this model's table, take
        a denoising step at each of `timesteps` (descending, normally `start` and then the grid below
        it), and return the clean prediction of the last step (float32, (F, C, h, w)).
        `unused_draw`: an LCM model draws its step noise after the last step too and drops it (what
        the authors' scheduler does), so later draws keep their order. `window`/`overlap`: the model sees
        at most `window` frames per call; every step of a longer video blends overlapping windows, so the
        whole clip follows one trajectory with one noise draw."""
        timesteps = [int(t) for t in timesteps]
        if not timesteps or min(timesteps) < 0:
            raise ValueError(f"SDEdit needs non-negative timesteps; got {timesteps}")
        table, scale = self.alphas_cumprod, self.signal_scale
        a = table[start].item()
        clean = clean.to(working_dtype(clean))
        draw = noise.randn(tuple(clean.shape)).to(clean.device, clean.dtype)
        x = scale(start) * math.sqrt(a) * clean + math.sqrt(1 - a) * draw
        prediction = clean
        for k, t in enumerate(timesteps):
            if before_call is not None:
                before_call()
            eps = self.predict_noise(x, t, prompts, guidance, window, overlap).to(x.device)
            a_t = table[t].item()
            prediction = (x - math.sqrt(1 - a_t) * eps) / (math.sqrt(a_t) * scale(t))
            if self.sampler == "lcm":
                prediction = lcm_boundary(x, prediction, t)
            if k == len(timesteps) - 1:
                if unused_draw and self.sampler == "lcm":
                    noise.randn(tuple(x.shape))
                break  # the last step's clean prediction is the result
            t_next = timesteps[k + 1]
            a_next = table[t_next].item()
            signal = scale(t_next) * math.sqrt(a_next) * prediction
            if self.sampler == "lcm":  # consistency step: re-noise the clean estimate
                x = signal + math.sqrt(1 - a_next) * noise.randn(tuple(x.shape)).to(x.device, x.dtype)
            else:  # DDIM, eta = 0
                x = signal + math.sqrt(1 - a_next) * eps
        return prediction


class BaseTextEncoder:
    """For backends that encode prompts with the CLIP text encoder of the SD1.x model they plug into
    (AnimateDiff, AnimateLCM, LaVie): `text_encoder` and `tokenizer` come from that base model."""

    text_encoder = None
    tokenizer = None

    @torch.no_grad()
    def encode_prompt(self, prompt: str, negative_prompt: str, device: torch.device | None = None) -> PromptPair:
        # As SD1 encodes prompts: the last hidden state, (1, 77, width); the encoder visits `device`.
        with modules_on([self.text_encoder], device):
            cond, uncond = (self._embed(text) for text in (prompt, negative_prompt))
        return PromptPair(cond.to(self.dtype), uncond.to(self.dtype))

    def _embed(self, text: str) -> torch.Tensor:
        ids = self.tokenizer(
            text, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        ).input_ids
        return self.text_encoder(ids.to(self.text_encoder.device))[0]


@contextlib.contextmanager
def modules_on(modules: list, device: torch.device | None):
    """Run `modules` (diffusers/transformers models) on `device` for a while, then put each back."""
    homes = [module.device for module in modules]
    if device is not None:
        for module in modules:
            module.to(device)
    try:
        yield
    finally:
        if device is not None:
            for module, home in zip(modules, homes):
                module.to(home)


def lcm_boundary(
    sample: torch.Tensor,
    predicted_clean: torch.Tensor,
    timestep: int,
    timestep_scaling: float = 10.0,
    sigma_data: float = 0.5,
) -> torch.Tensor:
    """LCM's consistency parametrisation (diffusers LCMScheduler defaults): c_skip * x + c_out * x0."""
    scaled = timestep * timestep_scaling
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / math.sqrt(scaled**2 + sigma_data**2)
    return c_out * predicted_clean + c_skip * sample
