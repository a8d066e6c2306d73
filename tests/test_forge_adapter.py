"""The Forge adapter's logic (lib_elevator/webui/forge/): the attn1 patch on every row layout a Forge
UNet call can have, the clone it lives on, the x0 calls, the GPU hand-over.

`forge/attention.py` is pure and is tested directly. `forge/host.py` imports Forge's `backend`; here
it runs against a stand-in of the five names it uses, shaped as in Forge main @ dfdcbab6 (a patcher
whose `clone()` deep-copies `model_options`; `calc_cond_uncond_batch` batching uncond chunks before
cond chunks and passing `cond_or_uncond` in `transformer_options`). Behaviour in the real Forge is
proven by tests/test_webui_host.py (HOST=forge tools/webui_host_test.sh)."""

import copy
import importlib
import sys
import types
from types import SimpleNamespace

import pytest
import torch

from lib_elevator.webui.forge import attention

F, TOKENS, CHANNELS = 4, 3, 2
UNCOND, COND = 1, 0


def rows(*chunks):
    """Hidden states of a UNet call: one chunk of F frames per entry; row value = 10 * chunk + frame."""
    values = [10 * c + f for c in range(len(chunks)) for f in range(F)]
    return torch.tensor(values, dtype=torch.float32)[:, None, None].expand(-1, TOKENS, CHANNELS).clone()


def first_token(x):
    return x[:, 0, 0].tolist()


@pytest.mark.parametrize("cond_or_uncond", [[UNCOND, COND], [COND], [UNCOND], [UNCOND, COND, COND]],
                         ids=["uncond+cond in one call", "cond only (cfg 1, PnP)", "uncond alone (low memory)",
                              "AND prompt: 3 chunks"])
def test_every_chunk_attends_to_its_own_anchor_frame(cond_or_uncond):
    patch = attention.make_attn1_patch(F, "first")
    n = rows(*cond_or_uncond)
    out_n, context, value = patch(n, n, n, {"cond_or_uncond": cond_or_uncond})
    assert out_n is n
    anchors = [10 * c for c in range(len(cond_or_uncond)) for _ in range(F)]
    assert first_token(context) == anchors and first_token(value) == anchors


def test_first_prev_anchor_and_the_authors_two_groups():
    patch = attention.make_attn1_patch(F, "first_prev")
    n = rows(UNCOND, COND)
    _, context, _ = patch(n, n, n, {"cond_or_uncond": [UNCOND, COND]})
    assert context.shape == (2 * F, 2 * TOKENS, CHANNELS)  # anchor tokens, then the previous frame's
    assert first_token(context[:, TOKENS:]) == [0, 0, 1, 2, 10, 10, 11, 12]
    patch = attention.make_attn1_patch(F, "first")
    with attention.grouped(patch, F // 2):
        _, context, _ = patch(n, n, n, {"cond_or_uncond": [UNCOND, COND]})
    assert first_token(context) == [0, 0, 2, 2, 10, 10, 12, 12]
    _, context, _ = patch(n, n, n, {"cond_or_uncond": [UNCOND, COND]})
    assert first_token(context) == [0, 0, 0, 0, 10, 10, 10, 10]  # back to one group afterwards


def test_a_context_changed_by_an_earlier_patch_is_anchored_as_given():
    patch = attention.make_attn1_patch(F, "first")
    n = rows(COND)
    _, context, value = patch(n, n + 100, n + 200, {"cond_or_uncond": [COND]})
    assert first_token(context) == [100] * F and first_token(value) == [200] * F


@pytest.mark.parametrize("batch, cond_or_uncond", [(6, [UNCOND, COND]), (8, [COND]), (7, [UNCOND, COND])],
                         ids=["3 frames a chunk", "one chunk of 8", "rows not whole chunks"])
def test_a_call_re_sliced_by_another_extension_is_refused(batch, cond_or_uncond):
    patch = attention.make_attn1_patch(F, "first")
    n = torch.zeros(batch, TOKENS, CHANNELS)
    with pytest.raises(attention.RowLayoutError, match="another extension changed the batch"):
        patch(n, n, n, {"cond_or_uncond": cond_or_uncond})


def test_clones_share_the_patch_and_its_group_setting():
    """Forge's clone() deep-copies model_options: a plain closure survives as the same function."""
    patch = attention.make_attn1_patch(F, "first")
    options = {"transformer_options": {"patches": {"attn1_patch": [patch]}}}
    copied = copy.deepcopy(options)["transformer_options"]["patches"]["attn1_patch"][0]
    assert copied is patch
    n = rows(COND)
    with attention.grouped(patch, 2):
        assert first_token(copied(n, n, n, {"cond_or_uncond": [COND]})[1]) == [0, 0, 2, 2]


def test_the_post_cfg_function_reports_and_leaves_the_result_alone():
    seen = []
    post_cfg = attention.make_post_cfg_function(lambda x, x0: seen.append((x, x0)))
    args = {"input": torch.ones(F, 1), "cond_denoised": torch.zeros(F, 1), "denoised": torch.full((F, 1), 3.0)}
    assert post_cfg(args) is args["denoised"] and seen == [(args["input"], args["cond_denoised"])]


# ------------------------------------------------------------------------------ ForgeHost on a stand-in


class UnetPatcher:
    """Forge's UnetPatcher as far as the adapter uses it (backend/patcher/base.py, unet.py)."""

    def __init__(self, model, model_options=None):
        self.model, self.model_options = model, model_options or {"transformer_options": {}}

    def clone(self):
        return UnetPatcher(self.model, copy.deepcopy(self.model_options))

    def set_model_attn1_patch(self, patch):
        patches = self.model_options["transformer_options"].setdefault("patches", {})
        patches["attn1_patch"] = patches.get("attn1_patch", []) + [patch]

    def set_model_sampler_post_cfg_function(self, function):
        self.model_options["sampler_post_cfg_function"] = self.model_options.get("sampler_post_cfg_function", []) \
            + [function]

    def set_model_unet_function_wrapper(self, wrapper):
        self.model_options["model_function_wrapper"] = wrapper

    def attn1_patches(self):
        return self.model_options["transformer_options"].get("patches", {}).get("attn1_patch", [])


class KModel:
    """x0 = the attn1 value of each row (its tokens averaged), after every attn1 patch: what an anchor
    patch does shows in the output."""

    def __init__(self):
        self.calls = []

    def apply_model(self, x, t, c_crossattn=None, transformer_options=None, **kwargs):
        self.calls.append({"rows": x.shape[0], "t": t, "cond_or_uncond": transformer_options["cond_or_uncond"]})
        n = x.flatten(2).transpose(1, 2)
        context = value = n
        for patch in transformer_options.get("patches", {}).get("attn1_patch", []):
            n, context, value = patch(n, context, value, transformer_options)
        return value.mean(1)[:, :, None, None].expand_as(x).clone()


def calc_cond_uncond_batch(model, cond, uncond, x_in, timestep, model_options):
    """Forge's: uncond chunks first, `cond_or_uncond` and the patches in transformer_options."""
    chunks = [(UNCOND, c) for c in (uncond or [])] + [(COND, c) for c in cond]
    options = dict(model_options.get("transformer_options", {}), cond_or_uncond=[kind for kind, _ in chunks])
    x, t, c = torch.cat([x_in] * len(chunks)), torch.cat([timestep] * len(chunks)), {"transformer_options": options}
    if "model_function_wrapper" in model_options:
        out = model_options["model_function_wrapper"](model.apply_model, {"input": x, "timestep": t, "c": c})
    else:
        out = model.apply_model(x, t, **c)
    out = out.chunk(len(chunks))
    by_kind = dict(zip([kind for kind, _ in chunks], out))
    return by_kind.get(COND, torch.zeros_like(x_in)), by_kind.get(UNCOND, torch.zeros_like(x_in))


@pytest.fixture
def forge(monkeypatch):
    """The adapter imported against a stand-in `backend`, and a job's `p` with a loaded SD1 model."""
    events = []
    memory = types.ModuleType("backend.memory_management")
    memory.unload_all_models = lambda: events.append("unload")
    memory.soft_empty_cache = lambda: events.append("empty cache")
    memory.load_models_gpu = lambda models, **kwargs: events.append("load vae")
    condition = types.ModuleType("backend.sampling.condition")
    condition.Condition = lambda tensor: ("concat", tensor)
    condition.compile_conditions = lambda cond: [{"model_conds": {"c_crossattn": cond}}]
    sampling = types.ModuleType("backend.sampling.sampling_function")
    sampling.calc_cond_uncond_batch = calc_cond_uncond_batch
    sampling.sampling_prepare = lambda unet, x: events.append(("prepare", unet, tuple(x.shape)))
    backend = types.ModuleType("backend")
    backend.memory_management = memory
    for name, module in {"backend": backend, "backend.memory_management": memory,
                         "backend.sampling": types.ModuleType("backend.sampling"),
                         "backend.sampling.condition": condition, "backend.sampling.sampling_function": sampling,
                         }.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delitem(sys.modules, "lib_elevator.webui.forge.host", raising=False)
    adapter = importlib.import_module("lib_elevator.webui.forge.host")
    from lib_elevator.webui.host import FORGE, HostInfo

    host = adapter.ForgeHost(HostInfo(FORGE, "f2.0.1v1.10.1"))
    original = UnetPatcher(KModel())
    sd_model = SimpleNamespace(is_sd1=True, forge_objects=SimpleNamespace(unet=original))
    yield SimpleNamespace(host=host, p=SimpleNamespace(sd_model=sd_model), original=original, events=events)
    sys.modules.pop("lib_elevator.webui.forge.host", None)


def test_the_patch_goes_on_a_clone_the_host_will_discard(forge):
    handle = forge.host.patch_unet(forge.p, F, "first", lambda x, x0: None)
    clone = forge.p.sd_model.forge_objects.unet
    assert clone is not forge.original and clone.model is forge.original.model
    assert len(clone.attn1_patches()) == 1 and len(clone.model_options["sampler_post_cfg_function"]) == 1
    assert forge.original.attn1_patches() == [] and "sampler_post_cfg_function" not in forge.original.model_options
    handle.remove()  # nothing to undo: the host's next reset drops the clone
    assert len(clone.attn1_patches()) == 1


def test_the_hires_double_call_uses_one_patch(forge):
    """Forge's hires pass: the first call still sees the first pass's clone (its clone gets two patches,
    and is thrown away); the host then resets forge_objects and the second call's clone is used."""
    forge.host.patch_unet(forge.p, F, "first", lambda x, x0: None)
    forge.host.patch_unet(forge.p, F, "first", lambda x, x0: None)
    assert len(forge.p.sd_model.forge_objects.unet.attn1_patches()) == 2
    forge.p.sd_model.forge_objects.unet = forge.original  # Forge's reset before the second call
    forge.host.patch_unet(forge.p, F, "first", lambda x, x0: None)
    assert len(forge.p.sd_model.forge_objects.unet.attn1_patches()) == 1


def test_x0_calls_go_through_forges_batched_call_with_the_patch(forge):
    handle = forge.host.patch_unet(forge.p, F, "first", lambda x, x0: None)
    denoise = forge.host.denoiser(forge.p, torch.zeros(F, 77, 8), torch.zeros(F, 5, 1, 1))
    x = torch.arange(F, dtype=torch.float32)[:, None, None, None].expand(F, 4, 2, 2).clone()
    x0 = denoise(x, 2.5)
    assert x0[:, 0, 0, 0].tolist() == [0.0] * F  # every frame took the anchor's values
    with handle.grouped(F // 2):
        assert denoise(x, 2.5)[:, 0, 0, 0].tolist() == [0.0, 0.0, 2.0, 2.0]
    call = forge.original.model.calls[-1]
    assert call["rows"] == F and call["cond_or_uncond"] == [COND] and call["t"].tolist() == [2.5] * F


def test_the_gpu_is_lent_and_the_unet_prepared_again_whatever_happens(forge):
    forge.host.patch_unet(forge.p, F, "first", lambda x, x0: None)
    clone = forge.p.sd_model.forge_objects.unet
    with pytest.raises(RuntimeError), forge.host.make_room(forge.p, (F, 4, 8, 8)):
        assert forge.events == ["unload", "empty cache"]
        raise RuntimeError("T2V out of memory")
    assert forge.events[-1] == ("prepare", clone, (F, 4, 8, 8))
    assert forge.host.offload_by_default()


def test_only_sd_checkpoints_with_a_discrete_schedule_are_elevated(forge):
    forge.original.model.predictor = SimpleNamespace(alphas_cumprod=torch.linspace(0.99, 0.01, 1000))
    forge.host.check_model(forge.p)
    assert forge.host.alphas_cumprod(forge.p) is forge.original.model.predictor.alphas_cumprod
    forge.p.sd_model = SimpleNamespace(is_sd1=False, is_sdxl=False, forge_objects=forge.p.sd_model.forge_objects)
    with pytest.raises(ValueError, match="checkpoint: SimpleNamespace checkpoints are not supported"):
        forge.host.check_model(forge.p)


# ------------------------------------------------------------------------------ which host


def fake_modules(monkeypatch, *names):
    """Make `names` importable (find_spec finds them) for one test."""
    import importlib.machinery

    for name in names:
        module = types.ModuleType(name)
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)
        monkeypatch.setitem(sys.modules, name, module)


@pytest.mark.parametrize("present, family", [
    ((), "AUTOMATIC1111"),
    (("modules_forge", "backend", "backend.patcher", "backend.patcher.unet"), "Forge"),
    (("modules_forge", "modules_forge.unet_patcher"), "Forge (old backend)"),
    (("ldm_patched",), "Forge (old backend)"),
], ids=["a1111", "forge", "forge1 (reForge)", "forge1 (Classic)"])
def test_the_host_family_is_told_by_what_imports(monkeypatch, present, family):
    from lib_elevator.webui import hosts

    for name in ("modules_forge", "modules_forge.unet_patcher", "backend", "backend.patcher",
                 "backend.patcher.unet", "ldm_patched"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    fake_modules(monkeypatch, *present)
    assert hosts.detect().family == family


def test_an_old_forge_backend_is_refused_by_name(monkeypatch):
    from lib_elevator.errors import SettingsError
    from lib_elevator.webui import host, hosts

    info = host.HostInfo(host.FORGE_CLASSIC, "v1.10.1-RC-1.7.0", "Panchovix/stable-diffusion-webui-reForge")
    refused = hosts.build(info)
    assert "reForge" in refused.unsupported() and "v1.10.1-RC-1.7.0" in refused.unsupported()
    with pytest.raises(SettingsError, match="host: Forge \\(old backend\\) v1.10.1-RC-1.7.0"):
        hosts.check_supported(refused)


def test_a_forge_that_renamed_what_we_use_is_refused_not_crashed(monkeypatch):
    """A descendant without backend.sampling.sampling_function (say): the adapter cannot import."""
    from lib_elevator.webui import host, hosts

    fake_modules(monkeypatch, "backend", "backend.memory_management")
    monkeypatch.delitem(sys.modules, "lib_elevator.webui.forge.host", raising=False)
    monkeypatch.setitem(sys.modules, "backend.sampling", None)  # import of it raises ImportError
    refused = hosts.build(host.HostInfo(host.FORGE, "f9.9", "someone/forge-fork"))
    assert "lacks a name VideoElevator uses" in refused.unsupported()
    assert "f9.9 (someone/forge-fork)" in refused.unsupported()


@pytest.mark.parametrize("anchor", ["first", "first_prev"])
def test_frames_in_chunks_through_forges_function_wrapper(forge, anchor):
    """With frame chunks the clone gets a UNet function wrapper that cuts every call into chunks; the
    patch takes the anchor's tokens from the chunk that held them: the x0 of one call over all frames."""
    from lib_elevator.cross_frame import FrameChunks

    x = torch.randn(F, 4, 2, 2)
    forge.host.patch_unet(forge.p, F, anchor, lambda x, x0: None)
    whole = forge.host.denoiser(forge.p, torch.zeros(F, 77, 8), None)(x, 1.5)
    forge.p.sd_model.forge_objects.unet = forge.original  # the host's reset before the next pass
    forge.host.patch_unet(forge.p, F, anchor, lambda x, x0: None, FrameChunks(F, 1, anchor))
    clone = forge.p.sd_model.forge_objects.unet
    assert "model_function_wrapper" in clone.model_options
    chunked = forge.host.denoiser(forge.p, torch.zeros(F, 77, 8), None)(x, 1.5)
    assert torch.allclose(chunked, whole, atol=1e-6)
    assert [call["rows"] for call in forge.original.model.calls[-F:]] == [1] * F
