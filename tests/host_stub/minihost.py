"""A miniature of the host's txt2img path (processing.py / sd_samplers_*.py, v1.10.1), enough to
run the adapter's hooks end to end on CPU in a fraction of a second:

- `FakeSDModel`: an SD1-like checkpoint whose UNet tree holds ldm-style `BasicTransformerBlock`s,
  whose attention is a plain softmax attention with a class-level forward, and whose `apply_model`
  (DDPM-form x, float timesteps, cond dict) returns eps of an exact Gaussian-data denoiser plus a
  small attention term, so cross-frame attention changes the result;
- `CFGDenoiser`: the host's batch layout ([cond rows, uncond rows], one call with
  `opts.batch_cond_uncond`, else one call per half), the `on_cfg_denoiser`/`on_cfg_denoised`
  callbacks, interrupt checks, `last_latent`;
- `KDiffusionSampler`/`CompVisSampler`: `sample()` calls the instance attribute `self.func` with
  the host's keyword arguments (chosen by inspecting its signature) inside `launch_sampling`, which
  turns an InterruptedException into the last latent;
- `FakeT2V`: a T2V backend whose model is an exact denoiser that pulls frames towards their mean
  (no weights), and `zeroscope_layout()`, a folder the model registry lists as a ZeroScope model;
- `Processing` + `process_images`: the Script hooks in the host's order, each of them swallowing
  its exceptions as `ScriptRunner` does, with `p.sample` creating the sampler and calling
  `process_before_every_sampling(p, x=, noise=, c=, uc=)`.

Import it only while the stand-in is installed (it imports `modules.*`)."""

from __future__ import annotations

import inspect
import json
import math
import os
import traceback

import torch
from modules import script_callbacks, sd_samplers_common, shared
from torch import nn

from host_stub import samplers
from lib_elevator.latent_space import SD1_LATENTS
from lib_elevator.t2v.base import PromptPair, T2VBackend

LATENT_CHANNELS = 4


class CrossAttention(nn.Module):
    """ldm's CrossAttention without projections; the class-level forward is what the host swaps."""

    def forward(self, x, context=None, mask=None, **kwargs):
        context = x if context is None else context
        if context.shape[0] != x.shape[0]:
            raise RuntimeError("the context batch must equal x's batch (as in the host's sdp/xformers kernels)")
        weights = torch.softmax(x @ context.transpose(1, 2) / math.sqrt(x.shape[-1]), dim=-1)
        return weights @ context


class BasicTransformerBlock(nn.Module):
    def __init__(self, disable_self_attn=False):
        super().__init__()
        self.attn1, self.attn2 = CrossAttention(), CrossAttention()
        self.disable_self_attn = disable_self_attn

    def forward(self, x, context=None):
        x = x + self.attn1(x, context=context if self.disable_self_attn else None)
        return x + self.attn2(x, context=context)


class UNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.input_blocks = nn.ModuleList([nn.Sequential(BasicTransformerBlock())])
        self.middle_block = nn.Sequential(BasicTransformerBlock(disable_self_attn=True))
        self.output_blocks = nn.ModuleList([nn.Sequential(BasicTransformerBlock())])

    def self_attention(self):
        return [m.attn1 for m in self.modules() if isinstance(m, BasicTransformerBlock) and not m.disable_self_attn]

    def forward(self, tokens, context):
        for block in [*self.input_blocks, self.middle_block, *self.output_blocks]:
            tokens = block[0](tokens, context=context)
        return tokens


class FakeSDModel(nn.Module):
    is_sd1, is_sd2, is_sdxl, is_sd3 = True, False, False, False
    parameterization = "eps"
    scale_factor = 0.18215
    lowvram = False

    def __init__(self, height=8, width=8, attention_weight=0.05):
        super().__init__()
        self.model = nn.Module()
        self.model.diffusion_model = UNet()
        self.model.conditioning_key = "crossattn"
        self.register_buffer("alphas_cumprod", samplers.sd_alphas_cumprod())
        mean = torch.linspace(-0.5, 0.5, LATENT_CHANNELS * height * width).reshape(1, LATENT_CHANNELS, height, width)
        self.data = samplers.GaussianData(mean, 0.8)
        self.attention_weight = attention_weight
        self.calls: list[dict] = []  # one entry per apply_model call
        self.log_sigmas = torch.tensor([samplers.sigma_of(float(a)) for a in self.alphas_cumprod]).log()

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        t = t.double().clamp(0, 999)
        low, high = t.floor().long(), t.ceil().long()
        w = t - low
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        log_sigma = sigma.double().log()
        high = torch.searchsorted(self.log_sigmas, log_sigma).clamp(1, 999)
        low = high - 1
        w = ((self.log_sigmas[high] - log_sigma) / (self.log_sigmas[high] - self.log_sigmas[low])).clamp(0, 1)
        return (1 - w) * high + w * low

    def get_learned_conditioning(self, prompts):
        return torch.stack([torch.full((2, 8), float(sum(map(ord, text)) % 17) / 17) for text in prompts])

    def apply_model(self, x, t, cond):
        unet = self.model.diffusion_model
        self.calls.append(
            {
                "rows": x.shape[0],
                "t": t.clone(),
                "cond": cond,
                "patched": ["forward" in attn.__dict__ for attn in unet.self_attention()],
            }
        )
        sigma = self.t_to_sigma(t).to(x.dtype).reshape(-1, 1, 1, 1)
        x_k = x * torch.sqrt(1 + sigma**2)
        text = cond["c_crossattn"][0]
        tokens = x_k.flatten(2).transpose(1, 2)  # (N, h*w, C)
        mixed = unet(tokens, context=torch.zeros(x.shape[0], 1, tokens.shape[-1], dtype=x.dtype))
        attention_term = (mixed - tokens).transpose(1, 2).reshape(x.shape) / (1 + sigma)
        denoised = self.data.denoise(x_k, sigma.flatten()) + self.attention_weight * attention_term
        denoised = denoised + 0.05 * text.mean(dim=(1, 2)).reshape(-1, 1, 1, 1).to(x.dtype)
        return (x_k - denoised) / sigma


class CFGDenoiser:
    def __init__(self, sampler, timesteps: bool):
        self.sampler, self.timesteps = sampler, timesteps
        self.p, self.step = None, 0
        self.steps = self.total_steps = 0
        self.inner_model = self._inner

    @property
    def alphas_cumprod(self):  # the CompVis samplers read the table through their model
        return shared.sd_model.alphas_cumprod

    def _inner(self, x, sigma, text, image_cond):
        sd_model = shared.sd_model
        cond = {"c_crossattn": [text], "c_concat": [image_cond]}
        if self.timesteps:  # DDPM-form x, integer timesteps: eps
            return sd_model.apply_model(x, sigma.float(), cond)
        s = sigma.to(x.dtype).reshape(-1, 1, 1, 1)
        eps = sd_model.apply_model(x / torch.sqrt(1 + s**2), sd_model.sigma_to_t(sigma).float(), cond)
        return x - s * eps

    def __call__(self, x, sigma, cond, uncond, cond_scale, image_cond, s_min_uncond=0.0):
        state = shared.state
        if state.interrupted or state.skipped:
            raise sd_samplers_common.InterruptedException
        rows = x.shape[0]
        params = script_callbacks.CFGDenoiserParams(
            torch.cat([x, x]),
            torch.cat([image_cond, image_cond]),
            torch.cat([sigma, sigma]),
            state.sampling_step,
            state.sampling_steps,
            cond,
            uncond,
            self,
        )
        script_callbacks.cfg_denoiser_callback(params)
        x_in, image_in, sigma_in = params.x, params.image_cond, params.sigma
        text = torch.cat([params.text_cond, params.text_uncond])
        if shared.opts.batch_cond_uncond:
            out = self.inner_model(x_in, sigma_in, text, image_in)
        else:
            out = torch.cat(
                [
                    self.inner_model(
                        x_in[k : k + rows], sigma_in[k : k + rows], text[k : k + rows], image_in[k : k + rows]
                    )
                    for k in (0, rows)
                ]
            )
        script_callbacks.cfg_denoised_callback(
            script_callbacks.CFGDenoisedParams(out, state.sampling_step, state.sampling_steps, self.inner_model)
        )
        self.sampler.last_latent = out[:rows]
        self.step += 1
        return out[rows:] + cond_scale * (out[:rows] - out[rows:])


class Sampler:
    timesteps = False

    def __init__(self, name: str, func):
        self.name, self.func = name, func  # func: an instance attribute, as in the host
        self.model_wrap_cfg = CFGDenoiser(self, self.timesteps)
        self.last_latent = None
        self.steps_seen: list[int] = []

    def callback_state(self, d):
        self.steps_seen.append(d["i"])
        shared.state.sampling_step = d["i"]

    def launch_sampling(self, steps, run):
        self.model_wrap_cfg.steps = self.model_wrap_cfg.total_steps = steps
        shared.state.sampling_steps, shared.state.sampling_step = steps, 0
        try:
            return run()
        except sd_samplers_common.InterruptedException:
            return self.last_latent

    def sample(self, p, x, conditioning, unconditional_conditioning, image_conditioning=None):
        self.model_wrap_cfg.p = p
        schedule, x = self.schedule(p, x)
        parameters = inspect.signature(self.func).parameters  # the host inspects the (wrapped) func
        kwargs = {key: value for key, value in schedule.items() if key in parameters}
        if "eta" in parameters:
            kwargs["eta"] = 0.0
        self.last_latent = x
        extra_args = {
            "cond": conditioning,
            "image_cond": image_conditioning,
            "uncond": unconditional_conditioning,
            "cond_scale": p.cfg_scale,
            "s_min_uncond": 0.0,
        }
        return self.launch_sampling(
            p.steps,
            lambda: self.func(
                self.model_wrap_cfg, x, extra_args=extra_args, disable=False, callback=self.callback_state, **kwargs
            ),
        )


class KDiffusionSampler(Sampler):
    def schedule(self, p, x):
        sigmas = samplers.karras_free_sigmas(shared.sd_model.alphas_cumprod, p.steps).float()
        return {"sigmas": sigmas}, x * sigmas[0]


class CompVisSampler(Sampler):
    timesteps = True

    def schedule(self, p, x):
        return {"timesteps": samplers.ddim_timesteps(p.steps)}, x


SAMPLERS = {
    "Euler": (KDiffusionSampler, samplers.sample_euler),
    "Euler a": (KDiffusionSampler, samplers.sample_euler_ancestral),
    "DDIM": (CompVisSampler, samplers.ddim),
}


def create_sampler(name: str) -> Sampler:
    cls, func = SAMPLERS[name]
    return cls(name, func)


class ScriptRunner:
    """Runs one always-on script's hooks with its args; exceptions are logged and swallowed."""

    def __init__(self, script, args):
        self.script, self.args, self.errors = script, tuple(args), []

    def _call(self, method, *args, **kwargs):
        try:
            getattr(self.script, method)(*args, **kwargs)
        except Exception:
            self.errors.append((method, traceback.format_exc()))

    def before_process(self, p):
        self._call("before_process", p, *self.args)

    def process_before_every_sampling(self, p, **kwargs):
        self._call("process_before_every_sampling", p, *self.args, **kwargs)

    def postprocess_batch(self, p, images, batch_number):
        self._call("postprocess_batch", p, *self.args, images=images, batch_number=batch_number)

    def postprocess(self, p, processed):
        self._call("postprocess", p, processed, *self.args)


class Processed:
    def __init__(self, p, images, infotexts):
        self.images, self.infotexts = images, infotexts
        self.extra_generation_params = p.extra_generation_params  # the same dict, as in the host
        self.comments = ""
        self.info = infotexts[0] if infotexts else ""


class Processing:
    """The fields of StableDiffusionProcessingTxt2Img the adapter reads or sets."""

    def __init__(self, outputs_root: str, **fields):
        self.prompt, self.negative_prompt = "a lighthouse in a storm", "blurry"
        self.seed, self.subseed, self.subseed_strength = 123, -1, 0.0
        self.steps, self.cfg_scale, self.width, self.height = 10, 5.0, 64, 64
        self.sampler_name, self.scheduler = "Euler", "Automatic"
        self.batch_size, self.n_iter = 1, 1
        self.extra_generation_params: dict = {}
        self.outpath_samples = os.path.join(outputs_root, "txt2img-images")
        self.outpath_grids = os.path.join(outputs_root, "txt2img-grids")
        self.is_api = False
        self.do_not_save_grid = self.do_not_save_samples = False
        self.enable_hr, self.is_hr_pass, self.hr_prompt = False, False, ""
        self.refiner_checkpoint = None
        self.styles, self.user = [], None
        self.sampler = None
        self.scripts: ScriptRunner | None = None
        self.prompts = self.negative_prompts = self.seeds = None
        self.iteration = self.batch_index = 0
        for key, value in fields.items():
            setattr(self, key, value)

    def latent_noise(self, seeds):
        shape = (LATENT_CHANNELS, self.height // 8, self.width // 8)
        return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        self.sampler = create_sampler(self.sampler_name)
        x = self.latent_noise(seeds)
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(
                self, x=x, noise=x, c=conditioning, uc=unconditional_conditioning
            )
        rows = x.shape[0]
        return self.sampler.sample(
            self, x, conditioning, unconditional_conditioning, image_conditioning=torch.zeros(rows, 5, 1, 1)
        )


def decode(samples: torch.Tensor) -> torch.Tensor:
    """A stand-in VAE: float [0, 1] (B, 3, 8h, 8w)."""
    images = torch.sigmoid(samples[:, :3].float())
    return images.repeat_interleave(8, dim=2).repeat_interleave(8, dim=3)


def process_images(p: Processing, script=None, args=()):
    """process_images_inner's order of hooks and per-batch slices (no hires, no grid)."""
    runner = p.scripts = ScriptRunner(script, args) if script is not None else None
    if runner:
        runner.before_process(p)
    total = p.batch_size * p.n_iter
    all_seeds = [int(p.seed) + k for k in range(total)]
    all_prompts, all_negative = [p.prompt] * total, [p.negative_prompt] * total
    images, infotexts = [], []
    for n in range(p.n_iter):
        if shared.state.interrupted or shared.state.skipped:
            break
        p.iteration = n
        batch = slice(n * p.batch_size, (n + 1) * p.batch_size)
        p.prompts, p.negative_prompts, p.seeds = all_prompts[batch], all_negative[batch], all_seeds[batch]
        p.subseeds = p.seeds
        c = shared.sd_model.get_learned_conditioning(p.prompts)
        uc = shared.sd_model.get_learned_conditioning(p.negative_prompts)
        samples = p.sample(c, uc, p.seeds, p.subseeds, p.subseed_strength, p.prompts)
        decoded = decode(samples)
        if runner:
            runner.postprocess_batch(p, images=decoded, batch_number=n)
        images += list(decoded)
        infotexts += [f"{p.prompt}\nSteps: {p.steps}"] * len(decoded)
    processed = Processed(p, images, infotexts)
    if runner:
        runner.postprocess(p, processed)
    return processed


class FakeT2V(T2VBackend):
    """A ZeroScope-like T2V backend without weights: eps of a denoiser that pulls every frame
    towards the mean frame, so refining visibly changes the video. Records its calls and moves."""

    kind, name, latent_space, prediction_type, sampler = "zeroscope", "fake-t2v", SD1_LATENTS, "epsilon", "ddim"

    def __init__(self, max_frames: int | None = None, on_call=None):
        self.alphas_cumprod = samplers.sd_alphas_cumprod()
        self.device, self.dtype = torch.device("cpu"), torch.float32
        self.calls: list[dict] = []
        self.moves: list[str] = []
        self.prompts: list[tuple[str, str]] = []
        self.on_call = on_call
        if max_frames is not None:
            self.max_frames = max_frames

    def encode_prompt(self, prompt, negative_prompt, device=None):
        self.prompts.append((prompt, negative_prompt))
        return PromptPair(torch.ones(1, 2, 8), torch.zeros(1, 2, 8))

    def model_output(self, video, timestep, context):
        self.calls.append({"shape": tuple(video.shape), "timestep": timestep})
        if self.on_call is not None:
            self.on_call(len(self.calls))
        a = float(self.alphas_cumprod[timestep])
        sigma = math.sqrt((1 - a) / a)
        x_k = video / math.sqrt(a)
        target = x_k.mean(dim=2, keepdim=True)  # the mean frame
        denoised = (x_k + sigma**2 * target) / (1 + sigma**2)
        return (x_k - denoised) / sigma

    def to(self, device=None, dtype=None):
        if device is not None:  # recorded only: the fake computes on the CPU wherever it is sent
            self.moves.append(str(device))
        return self


def zeroscope_layout(folder: str) -> str:
    """A diffusers text-to-video folder as the registry recognises it (configs only, no weights)."""
    os.makedirs(os.path.join(folder, "unet"), exist_ok=True)
    with open(os.path.join(folder, "model_index.json"), "w") as f:
        json.dump({"_class_name": "TextToVideoSDPipeline"}, f)
    with open(os.path.join(folder, "unet", "config.json"), "w") as f:
        json.dump({"_class_name": "UNet3DConditionModel"}, f)
    return folder
