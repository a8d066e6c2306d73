"""The negative ("empty") conditioning of the standalone T2I model (lib_elevator/t2i.py) against diffusers'.

Reference, read from diffusers 0.36.0 `StableDiffusionXLPipeline` (its pipelines do not import with the
pinned transformers 4.30.2, so the values are stated here, not computed by it):
- `encode_prompt`: `zero_out_negative_prompt = negative_prompt is None and self.config.force_zeros_for_empty_prompt`
  (a pipeline config entry, True by default; a folder's model_index.json may set it); then
  `negative_prompt_embeds = torch.zeros_like(prompt_embeds)` and
  `negative_pooled_prompt_embeds = torch.zeros_like(pooled_prompt_embeds)`: the shapes (and dtype) of the
  positive prompt's, (B, 77, 768 + 1280) and (B, 1280) for SDXL base. A negative prompt that is given (even
  "") is encoded through both towers like the positive one.
- `__call__`: `add_time_ids = _get_add_time_ids(original_size, crops_coords_top_left, target_size)` =
  [[h, w, 0, 0, h, w]] by default, and `negative_add_time_ids = add_time_ids` unless negative sizes are given.
SD1/SD2 pipelines have no such switch: their uncond is the encoded "".
"""

import pytest
import torch

from lib_elevator.tiny.t2i import tiny_t2i


@pytest.fixture(scope="module")
def sdxl():
    return tiny_t2i("sdxl", seed=3)


def test_sdxl_empty_negative_is_zeros_with_the_positive_shapes_and_size_ids(sdxl):
    positive = sdxl.encode_prompt("a lighthouse", 96, 64)
    negative = sdxl.encode_prompt("", 96, 64, negative=True)
    assert negative.context.shape == positive.context.shape == (1, 77, 64)  # both tiny towers' widths side by side
    assert negative.context.dtype == positive.context.dtype and negative.context.device == positive.context.device
    assert torch.count_nonzero(negative.context) == 0
    assert set(negative.added) == set(positive.added) == {"text_embeds", "time_ids"}
    assert negative.added["text_embeds"].shape == positive.added["text_embeds"].shape == (1, 32)
    assert torch.count_nonzero(negative.added["text_embeds"]) == 0
    assert negative.added["time_ids"].tolist() == positive.added["time_ids"].tolist() == [[96, 64, 0, 0, 96, 64]]
    assert negative.added["time_ids"].dtype == positive.added["time_ids"].dtype
    # it drops into a CFG batch and repeats like any other condition
    rows = negative.repeat(3)
    assert rows.context.shape == (3, 77, 64) and rows.added["time_ids"].shape == (3, 6)


def test_sdxl_given_negative_prompts_and_positive_empty_prompts_are_encoded(sdxl):
    encoded_empty = sdxl.encode_prompt("", 64, 64)
    assert torch.count_nonzero(encoded_empty.context) > 0 and torch.count_nonzero(encoded_empty.added["text_embeds"]) > 0
    given = sdxl.encode_prompt("blurry", 64, 64, negative=True)
    plain = sdxl.encode_prompt("blurry", 64, 64)
    assert torch.equal(given.context, plain.context)
    assert all(torch.equal(given.added[k], plain.added[k]) for k in plain.added)


def test_sdxl_zeros_can_be_turned_off_like_diffusers_config(sdxl):
    sdxl.force_zeros_for_empty_prompt = False
    try:
        negative = sdxl.encode_prompt("", 64, 64, negative=True)
    finally:
        sdxl.force_zeros_for_empty_prompt = True
    assert torch.equal(negative.context, sdxl.encode_prompt("", 64, 64).context)


@pytest.mark.parametrize("kind", ["sd1", "sd2"])
def test_sd1_and_sd2_encode_the_empty_prompt(kind):
    model = tiny_t2i(kind, seed=1)
    negative = model.encode_prompt("", 64, 64, negative=True)
    assert torch.equal(negative.context, model.encode_prompt("", 64, 64).context)
    assert torch.count_nonzero(negative.context) > 0 and negative.added == {}
