"""The simulated GPU behind bench.vram: it counts what lands on the device, keeps host work real, and
shows the offload moves of a real job (tiny models, float16)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from t2v_fixtures import tiny_sd1_base
from torch._subclasses.fake_tensor import FakeTensor

from bench.simulated_gpu import BLOCK, DEVICE, SimulatedGpu
from bench.vram import device_bytes, run_job
from lib_elevator.elevator import plan_refinement
from lib_elevator.filters import _fft_order_mask
from lib_elevator.settings import Settings
from lib_elevator.standalone import Job, make_schedule
from lib_elevator.t2v.registry import load_t2v
from lib_elevator.t2v.zeroscope import ZeroScopeBackend
from lib_elevator.tiny.t2i import tiny_t2i
from lib_elevator.tiny.t2v import build_tiny_zeroscope_folder, write_tiny_motion_module


def test_counts_device_storages_until_freed():
    with SimulatedGpu().active() as sim:
        a = torch.empty(1000, device=DEVICE)  # 4,000 bytes: one allocation rounded up to 4,096
        assert isinstance(a, FakeTensor) and sim.current == 4096
        view = a[:10]
        assert sim.current == 4096  # a view shares the storage
        b = a * 2
        assert sim.current == sim.peak == 8192
        del a
        assert sim.current == 8192  # the view keeps the storage alive
        del view
        assert sim.current == 4096 and sim.peak == 8192
        sim.reset_peak()
        assert sim.peak == 4096
        del b
        assert sim.current == 0


def test_host_work_stays_real_and_moves_are_counted():
    with SimulatedGpu().active() as sim:
        table = torch.linspace(0.0, 1.0, 11, dtype=torch.float64)  # a schedule table: real, readable
        assert not isinstance(table, FakeTensor) and table[5].item() == 0.5
        on_device = table.to(DEVICE, torch.float32)
        assert isinstance(on_device, FakeTensor) and sim.current == BLOCK
        back = on_device.to("cpu")
        assert isinstance(back, FakeTensor) and back.device.type == "cpu"
        del on_device
        assert sim.current == 0  # the CPU copy costs the device nothing


def test_float16_attention_holds_no_score_matrix():
    with SimulatedGpu().active() as sim:
        q = torch.empty(2, 8, 4096, 40, device=DEVICE, dtype=torch.float16)
        sim.reset_peak()
        before = sim.current
        out = F.scaled_dot_product_attention(q, q, q)
        assert out.shape == q.shape
        # output + FlashAttention's log-sum-exp rows; the math path would hold 2*8*4096*4096 scores (512 MiB)
        assert sim.peak - before <= q.nbytes + 2 * 8 * 4096 * 4 + 4 * BLOCK


def test_offloading_frees_the_t2i_weights_while_the_t2v_model_works(model_cache):
    folder = build_tiny_zeroscope_folder(str(model_cache / "vram-zeroscope"))
    settings = Settings(frames=4, refine_points="25%,75%", t2v_steps=2).validate()
    job = Job("a lighthouse", "blurry", 64, 64, 8, 7.5, seed=0)
    _fft_order_mask.cache_clear()  # its masks live on the device they were made for
    with SimulatedGpu().active() as sim:
        t2i = tiny_t2i("sd1").to("cpu", torch.float16)
        t2v = ZeroScopeBackend.load(folder).to("cpu", torch.float16)
        t2i_weights = device_bytes(sim, lambda: t2i.to(DEVICE))
        vae_weights = sum(-(-p.nbytes // BLOCK) * BLOCK for p in t2i.vae.parameters())
        t2v_weights = device_bytes(sim, lambda: t2v.to(DEVICE))
        resident = run_job(sim, t2i, t2v, job, settings, offload=False)
        t2v.to("cpu")
        offloaded = run_job(sim, t2i, t2v, job, settings, offload=True)
        schedule = make_schedule(job.schedule, t2i, job.steps)
        plan = plan_refinement(settings, schedule, t2i.alphas_cumprod, t2v.alphas_cumprod)
    _fft_order_mask.cache_clear()

    # What a job leaves on the device: the low-pass mask, cached for the next job (F x h x w float32).
    mask_bytes = -(-settings.frames * 8 * 8 * 4 // BLOCK) * BLOCK
    assert resident["start"] == t2i_weights + t2v_weights
    assert resident["end"] == resident["start"] + mask_bytes
    # Offloaded: the T2V model went back to the CPU and the T2I model came back (the mask is cached already).
    assert offloaded["start"] == offloaded["end"] == t2i_weights + mask_bytes
    assert sum(offloaded["calls"].values()) == plan.total_calls(settings)
    # During the T2V steps the T2I UNet and text encoder step aside: only the T2I VAE stays.
    assert offloaded["stages"]["t2v"] == resident["stages"]["t2v"] - (t2i_weights - vae_weights)
    # The T2I steps run without the T2V model.
    assert offloaded["stages"]["t2i"] == resident["stages"]["t2i"] - t2v_weights


@pytest.mark.parametrize("kind", ["zeroscope", "animatediff"])
def test_an_offloaded_t2v_model_encodes_its_prompts_on_the_device(model_cache, kind):
    """Its text encoder sits on the CPU with it (in float16, slow there); it visits the device to encode."""
    if kind == "zeroscope":
        folder = build_tiny_zeroscope_folder(str(model_cache / "vram-zeroscope"))
    else:
        folder = write_tiny_motion_module(str(model_cache / "vram-mm_sd_v15_v2.safetensors"), "v2", seed=2)
    with SimulatedGpu().active() as sim:
        base = tiny_sd1_base() if kind == "animatediff" else None
        t2v = load_t2v(folder, base=base).to("cpu", torch.float16)
        encoders = base.to("cpu", torch.float16).text_encoders if base is not None else [t2v.text_encoder]
        encoder_bytes = sum(-(-p.nbytes // BLOCK) * BLOCK for e in encoders for p in e.parameters())
        sim.reset_peak()
        prompts = t2v.encode_prompt("a boat on a lake", "blurry", DEVICE)
        assert sim.peak >= encoder_bytes  # it ran on the device ...
        assert all(p.device.type == "cpu" for e in encoders for p in e.parameters())  # ... and went back
        assert prompts.cond.device == prompts.uncond.device == DEVICE
        assert sim.current == 2 * (-(-prompts.cond.nbytes // BLOCK) * BLOCK)  # only the embeddings stay
