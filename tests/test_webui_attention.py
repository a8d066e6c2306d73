"""Cross-frame attention inside the host's UNet (lib_elevator/webui/attention.py) and the batch
layouts it must handle, on fake ldm-style modules.

The fake `CrossAttention` has a class-level `forward(self, x, context=None, mask=None, **kwargs)`
that records what it got, like the host's optimised attention functions, which the host assigns to
the class. The guaranteed clean-up around a job (job.wrap_sample) is in test_webui_job.py."""

import pytest
import torch
from torch import nn

from lib_elevator.cross_frame import anchor_context
from lib_elevator.webui.a1111 import attention

F, TOKENS, CHANNELS = 4, 3, 2


def make_unet():
    """A UNet-like tree: three transformer blocks (one with disable_self_attn) nested like ldm's
    SpatialTransformer, and a look-alike block of another class that must be left alone."""

    class CrossAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.calls = []

        def forward(self, x, context=None, mask=None, **kwargs):
            self.calls.append({"impl": "default", "x": x, "context": context, "mask": mask, "kwargs": kwargs})
            return x

    class BasicTransformerBlock(nn.Module):
        def __init__(self, disable_self_attn=False):
            super().__init__()
            self.attn1, self.attn2 = CrossAttention(), CrossAttention()
            self.disable_self_attn = disable_self_attn

    class OtherBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn1 = CrossAttention()

    class SpatialTransformer(nn.Module):
        def __init__(self, *blocks):
            super().__init__()
            self.transformer_blocks = nn.ModuleList(blocks)

    unet = nn.Module()
    unet.input_blocks = nn.ModuleList([nn.Sequential(nn.Identity(), SpatialTransformer(BasicTransformerBlock()))])
    unet.middle_block = nn.Sequential(SpatialTransformer(BasicTransformerBlock(disable_self_attn=True)))
    unet.output_blocks = nn.ModuleList([SpatialTransformer(BasicTransformerBlock(), OtherBlock())])
    blocks = [m for m in unet.modules() if type(m).__name__ == "BasicTransformerBlock"]
    unet.self_attn = [blocks[0].attn1, blocks[2].attn1]  # what must be patched, in module order
    unet.untouched = [
        blocks[0].attn2,
        blocks[1].attn1,
        blocks[1].attn2,
        blocks[2].attn2,
        unet.output_blocks[0].transformer_blocks[1].attn1,
    ]
    unet.attention_class = CrossAttention
    return unet


def rows(count: int) -> torch.Tensor:
    """(count, TOKENS, CHANNELS) where every element of row r equals r."""
    return torch.arange(count, dtype=torch.float32).reshape(count, 1, 1).expand(count, TOKENS, CHANNELS).clone()


def patched(module) -> bool:
    return "forward" in module.__dict__


def test_only_self_attention_of_transformer_blocks_is_patched():
    unet = make_unet()
    modules = attention.install(unet, F, "first")
    assert modules == unet.self_attn
    assert all(patched(m) for m in unet.self_attn)
    assert not any(patched(m) for m in unet.untouched)


def test_calls_get_the_anchor_context_and_keep_mask_and_kwargs():
    unet = make_unet()
    attention.install(unet, F, "first")
    attn = unet.self_attn[0]
    x, mask = rows(2 * F), torch.ones(1)
    out = attn(x, mask=mask, additional_tokens=None, n_times_crossframe_attn_in_self=0)  # sgm passes these
    assert out is x
    (call,) = attn.calls
    assert call["x"] is x and call["mask"] is mask
    assert call["kwargs"] == {"additional_tokens": None, "n_times_crossframe_attn_in_self": 0}
    assert torch.equal(call["context"], anchor_context(x, F, "first"))
    # an explicit context (cross-attention use) is passed through untouched
    text = torch.zeros(2 * F, 5, CHANNELS)
    attn(x, context=text)
    assert attn.calls[-1]["context"] is text


def test_grouped_anchors_groups_of_the_given_rows_for_a_while():
    """compat="authors": their inversion batch of F rows has two anchor groups (frames F/2.. attend to
    frame F/2); the groups are F again afterwards, also after an error."""
    unet = make_unet()
    modules = attention.install(unet, F, "first")
    attn = unet.self_attn[0]
    x = rows(F)
    with attention.grouped(modules, F // 2):
        attn(x)
    assert torch.equal(attn.calls[-1]["context"][:, 0, 0], torch.tensor([0.0] * (F // 2) + [F // 2] * (F // 2)))
    with pytest.raises(RuntimeError), attention.grouped(modules, F // 2):
        raise RuntimeError("inversion failed")
    attn(x)
    assert torch.equal(attn.calls[-1]["context"][:, 0, 0], torch.zeros(F))


def test_the_class_forward_in_place_at_call_time_is_used():
    """The host swaps the class-level forward when the attention optimisation changes."""
    unet = make_unet()
    attention.install(unet, F, "first")
    attn = unet.self_attn[1]

    def sdp_forward(self, x, context=None, mask=None, **kwargs):
        self.calls.append({"impl": "sdp", "x": x, "context": context, "mask": mask, "kwargs": kwargs})
        return x * 2

    unet.attention_class.forward = sdp_forward
    x = rows(F)
    assert torch.equal(attn(x), x * 2)
    assert [call["impl"] for call in attn.calls] == ["sdp"]
    assert torch.equal(attn.calls[0]["context"], anchor_context(x, F, "first"))


def test_remove_restores_the_class_lookup():
    unet = make_unet()
    modules = attention.install(unet, F, "first")
    attention.remove(modules)
    for module in unet.self_attn:
        assert "forward" not in module.__dict__
        assert module.forward.__func__ is unet.attention_class.forward
        x = rows(F)
        module(x)
        assert module.calls[-1]["context"] is None
    attention.remove(modules)  # removing twice is harmless


def test_a_wrapper_stacked_on_top_of_ours_is_left_alone():
    unet = make_unet()
    modules = attention.install(unet, F, "first")
    attn = unet.self_attn[0]
    ours = attn.forward

    def theirs(x, *args, **kwargs):  # e.g. another extension wrapping the instance forward after us
        return ours(x, *args, **kwargs)

    attn.forward = theirs
    attention.remove(modules)
    assert attn.__dict__["forward"] is theirs
    assert not patched(unet.self_attn[1])
    assert attention.remove_everywhere(unet) == 0
    assert attn.__dict__["forward"] is theirs


def test_a_buried_wrapper_of_ours_is_inert_after_the_job():
    unet = make_unet()
    modules = attention.install(unet, F, "first")
    attn = unet.self_attn[0]
    ours = attn.forward
    attn.forward = lambda x, *args, **kwargs: ours(x, *args, **kwargs)  # stacked by another extension
    attention.remove(modules)
    attn(rows(3))  # a later job with 3 rows: plain self-attention, no anchor context, no error
    assert attn.calls[-1]["context"] is None


def test_remove_everywhere_cleans_leftovers():
    unet = make_unet()
    attention.install(unet, F, "first")
    attention.install(unet, F, "first_prev")  # a second install (hires pass) replaces, not stacks
    assert attention.remove_everywhere(unet) == 2
    assert not any(patched(m) for m in unet.self_attn + unet.untouched)
    assert attention.remove_everywhere(unet) == 0


def test_a_unet_without_transformer_blocks_is_refused():
    with pytest.raises(RuntimeError, match="no self-attention layers"):
        attention.install(nn.Sequential(nn.Linear(2, 2)), F, "first")


# ------------------------------------------------------------------------------ token merging (tomesd)


def tome_patch(unet):
    """What tomesd 0.1.3's `apply_patch` does to the host's model (the host calls it with use_rand=False
    when Settings > Token merging ratio > 0): every BasicTransformerBlock's class becomes a `ToMeBlock`
    subclass made on the fly, whose `_forward` gives attn1 each row's tokens merged to fewer (here pairs
    averaged; tomesd matches tokens per row) and no context unless disable_self_attn."""
    for module in unet.modules():
        if type(module).__name__ != "BasicTransformerBlock":
            continue

        class ToMeBlock(type(module)):
            _parent = type(module)

            def _forward(self, x, context=None):
                merged = x.reshape(x.shape[0], x.shape[1] // 2, 2, x.shape[2]).mean(2)  # per row, same count
                return self.attn1(merged, context=context if self.disable_self_attn else None)

        module.__class__ = ToMeBlock
    return unet


def tome_unpatch(unet):
    for module in unet.modules():
        if type(module).__name__ == "ToMeBlock":
            module.__class__ = module._parent


def test_token_merged_blocks_are_found_along_the_class_hierarchy():
    unet = tome_patch(make_unet())
    assert attention.self_attention_modules(unet) == unet.self_attn  # no longer "unsupported model"
    modules = attention.install(unet, F, "first")
    assert modules == unet.self_attn
    assert not any(patched(m) for m in unet.untouched)
    tome_unpatch(unet)  # the host removes tomesd after the job; our clean-up still finds every wrapper
    assert attention.remove_everywhere(unet) == 2


@pytest.mark.parametrize("anchor", ["first", "first_prev"])
def test_token_merged_rows_keep_their_frame_groups(anchor):
    """attn1 gets (2F, N/2, C): every row merged to the same count, rows in the same order, so each
    frame's keys/values are the merged tokens of its group's anchor frame."""
    unet = tome_patch(make_unet())
    attention.install(unet, F, anchor)
    block = next(m for m in unet.modules() if type(m).__name__ == "ToMeBlock" and m.attn1 is unet.self_attn[0])
    x = torch.randn(2 * F, 4, CHANNELS)
    block._forward(x)
    call = unet.self_attn[0].calls[-1]
    merged = x.reshape(2 * F, 2, 2, CHANNELS).mean(2)
    assert torch.equal(call["x"], merged)
    assert torch.equal(call["context"], anchor_context(merged, F, anchor))
    for r in range(2 * F):
        assert torch.equal(call["context"][r, :2], merged[r - r % F])


# ------------------------------------------------------------------------------ batch layouts


@pytest.mark.parametrize("anchor", ["first", "first_prev"])
def test_cond_uncond_merged_in_one_call(anchor):
    """2F rows: cond frames 0..F-1, then uncond frames 0..F-1 (batch_cond_uncond)."""
    unet = make_unet()
    attention.install(unet, F, anchor)
    attn = unet.self_attn[0]
    x = rows(2 * F)
    attn(x)
    context = attn.calls[-1]["context"]
    assert context.shape == (2 * F, TOKENS * (2 if anchor == "first_prev" else 1), CHANNELS)
    for r in range(2 * F):
        first = r - r % F  # row 0 of this row's own group
        assert torch.all(context[r, :TOKENS] == first), r
        if anchor == "first_prev":
            assert torch.all(context[r, TOKENS:] == max(r - 1, first)), r


@pytest.mark.parametrize("anchor", ["first", "first_prev"])
def test_cond_and_uncond_split_into_separate_calls(anchor):
    """F rows per call (batch_cond_uncond off, or uncond sent separately): each call is one group."""
    unet = make_unet()
    attention.install(unet, F, anchor)
    attn = unet.self_attn[1]
    cond, uncond = rows(F), rows(F) + 100
    attn(cond)
    attn(uncond)
    for call, x in zip(attn.calls, (cond, uncond)):
        assert torch.equal(call["context"][:, :TOKENS], x[[0] * F])
        if anchor == "first_prev":
            assert torch.equal(call["context"][:, TOKENS:], x[[0, 0, 1, 2]])


def test_several_videos_and_three_way_batches_keep_their_groups():
    """Any multiple of F (e.g. edit models' 3F rows) is a sequence of groups of F."""
    unet = make_unet()
    attention.install(unet, F, "first")
    attn = unet.self_attn[0]
    x = rows(3 * F)
    attn(x)
    expected = [g * F for g in range(3) for _ in range(F)]
    assert attn.calls[-1]["context"][:, 0, 0].tolist() == expected


def test_a_row_count_that_is_not_a_multiple_of_the_frames_raises():
    unet = make_unet()
    attention.install(unet, F, "first")
    with pytest.raises(ValueError, match="not a whole number of groups"):
        unet.self_attn[0](rows(F + 1))
    assert unet.self_attn[0].calls == []
