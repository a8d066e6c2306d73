"""Merging LoRA files into loaded diffusers/transformers modules, in place (as the WebUI does by default).

Two file formats are understood:
- kohya / A1111: `lora_unet_<module path with '_'>.lora_down.weight`, `.lora_up.weight`, `.alpha`, with
  `lora_te_`, `lora_te1_`, `lora_te2_` for the text encoders. The UNet path may use diffusers names
  (SD1/SD2 LoRAs) or the original ldm/sgm names (SDXL LoRAs: `input_blocks_4_1_…`).
- diffusers / peft: `unet.<module>.lora_A.weight` / `.lora_B.weight`, or `.lora.down.weight` /
  `.lora.up.weight` (and the older attention-processor and text-encoder variants).

Module names are resolved against the given module trees, not a fixed table, so the same code merges
into a UNet2DConditionModel, a UNetMotionModel (same spatial names plus motion modules) or a CLIP
text encoder. The update of a layer is W += weight * alpha / rank * up @ down.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import torch

from lib_elevator.errors import ModelError
from lib_elevator.weights import read_state_dict

logger = logging.getLogger(__name__)

KOHYA_ROOTS = {
    "lora_unet_": "unet",
    "lora_te1_": "text_encoder",
    "lora_te2_": "text_encoder_2",
    "lora_te_": "text_encoder",
}

# Weight-name endings (after the module path and a dot) -> which factor they hold.
LORA_SUFFIXES = [
    ("lora_linear_layer.down.weight", "down"),
    ("lora_linear_layer.up.weight", "up"),
    ("lora.down.weight", "down"),
    ("lora.up.weight", "up"),
    ("lora_down.weight", "down"),
    ("lora_up.weight", "up"),
    ("lora_A.weight", "down"),
    ("lora_B.weight", "up"),
    ("alpha", "alpha"),
]
# Old diffusers attention-processor LoRAs name the factor after the projection it adapts.
PROCESSOR_PATTERN = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")


# ------------------------------------------------------------------------------ original UNet names
RESNET_INNER = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
UNET_TOP_LEVEL = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def unet_block_names(unet) -> dict[str, tuple[str, str]]:
    """diffusers block path -> (original block path, block type) for a UNet2DConditionModel-like tree.
    The original UNet numbers its blocks in one running sequence (input_blocks.0 is conv_in), so the
    numbering is read off the actual tree: resnets/attentions per level, then a down/upsampler."""
    names: dict[str, tuple[str, str]] = {}
    index = 1
    for b, block in enumerate(unet.down_blocks):
        attentions = getattr(block, "attentions", None)
        for j in range(len(block.resnets)):
            names[f"down_blocks.{b}.resnets.{j}"] = (f"input_blocks.{index}.0", "resnet")
            if attentions is not None:
                names[f"down_blocks.{b}.attentions.{j}"] = (f"input_blocks.{index}.1", "attention")
            index += 1
        if getattr(block, "downsamplers", None) is not None:
            names[f"down_blocks.{b}.downsamplers.0.conv"] = (f"input_blocks.{index}.0.op", "other")
            index += 1
    mid = unet.mid_block
    mid_attentions = getattr(mid, "attentions", None) or []
    index = 0
    for j in range(len(mid.resnets)):
        names[f"mid_block.resnets.{j}"] = (f"middle_block.{index}", "resnet")
        index += 1
        if j < len(mid_attentions):
            names[f"mid_block.attentions.{j}"] = (f"middle_block.{index}", "attention")
            index += 1
    index = 0
    for b, block in enumerate(unet.up_blocks):
        attentions = getattr(block, "attentions", None)
        for j in range(len(block.resnets)):
            names[f"up_blocks.{b}.resnets.{j}"] = (f"output_blocks.{index}.0", "resnet")
            if attentions is not None:
                names[f"up_blocks.{b}.attentions.{j}"] = (f"output_blocks.{index}.1", "attention")
            if j == len(block.resnets) - 1 and getattr(block, "upsamplers", None) is not None:
                slot = 2 if attentions is not None else 1
                names[f"up_blocks.{b}.upsamplers.0.conv"] = (f"output_blocks.{index}.{slot}.conv", "other")
            index += 1
    for name, original in UNET_TOP_LEVEL.items():
        names[name] = (original, "other")
    return names


def original_unet_name(name: str, block_names: dict[str, tuple[str, str]]) -> str | None:
    """Original (ldm/sgm) name of the diffusers UNet module or parameter `name`; None when the
    original UNet has no such module (e.g. AnimateDiff motion modules)."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):  # longest block path first
        block = ".".join(parts[:cut])
        if block not in block_names:
            continue
        original, block_type = block_names[block]
        inner = parts[cut:]
        if block_type == "resnet" and inner and inner[0] in RESNET_INNER:
            inner = [RESNET_INNER[inner[0]], *inner[1:]]
        return ".".join([original, *inner])
    return None


def original_unet_names(unet) -> dict[str, str]:
    """diffusers module name -> original module name, for every module of `unet` that has one."""
    block_names = unet_block_names(unet)
    names = {}
    for name, _ in unet.named_modules():
        original = original_unet_name(name, block_names) if name else None
        if original is not None:
            names[name] = original
    return names


# ------------------------------------------------------------------------------ resolving LoRA keys
def lora_layers(module: torch.nn.Module) -> dict[str, torch.nn.Module]:
    return {n: m for n, m in module.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}


class ModuleIndex:
    """Finds a layer of one module tree from a dotted diffusers name, its kohya underscore form, or
    (for UNets) its original ldm/sgm name in either form."""

    def __init__(self, module: torch.nn.Module):
        self.layers = lora_layers(module)
        self.by_underscore = {n.replace(".", "_"): n for n in self.layers}
        self.by_original: dict[str, str] = {}
        if hasattr(module, "down_blocks") and hasattr(module, "mid_block"):
            for name, original in original_unet_names(module).items():
                if name in self.layers:
                    self.by_original[original] = name
                    self.by_original[original.replace(".", "_")] = name

    def find(self, path: str) -> str | None:
        if path in self.layers:
            return path
        return self.by_underscore.get(path) or self.by_original.get(path)


def split_lora_key(key: str) -> tuple[str, str] | None:
    """'<module path>.<factor suffix>' -> (module path, 'down'|'up'|'alpha'); None for other keys."""
    match = PROCESSOR_PATTERN.search(key)
    if match:
        projection = "to_out.0" if match.group(1) == "to_out" else match.group(1)
        return key[: match.start()] + "." + projection, match.group(2)
    for suffix, factor in LORA_SUFFIXES:
        if key.endswith("." + suffix):
            return key[: -len(suffix) - 1], factor
    return None


def resolve_module_path(path: str, indexes: dict[str, ModuleIndex]) -> tuple[str, str] | None:
    """(root, layer name) of a LoRA module path, or None when nothing in the trees matches it."""
    for prefix, root in KOHYA_ROOTS.items():
        if path.startswith(prefix):
            if root not in indexes:
                return None
            found = indexes[root].find(path[len(prefix) :])
            return (root, found) if found else None
    path = path.removeprefix("base_model.model.")
    root, _, rest = path.partition(".")
    if root in indexes:
        found = indexes[root].find(rest)
        if found:
            return root, found
    # Files holding one model only (e.g. a UNet LoRA saved without its "unet." prefix).
    for root, index in indexes.items():
        found = index.find(path)
        if found:
            return root, found
    return None


@dataclass
class LoraPlan:
    """What a LoRA file would change: per (root, layer) its factors, plus the keys that matched nothing."""

    factors: dict[tuple[str, str], dict[str, torch.Tensor]] = field(default_factory=dict)
    unmatched: list[str] = field(default_factory=list)


def plan_lora(root_modules: dict[str, torch.nn.Module], state_dict: dict[str, torch.Tensor]) -> LoraPlan:
    indexes = {root: ModuleIndex(module) for root, module in root_modules.items()}
    plan = LoraPlan()
    for key, tensor in state_dict.items():
        split = split_lora_key(key)
        target = resolve_module_path(split[0], indexes) if split else None
        if target is None:
            plan.unmatched.append(key)
            continue
        plan.factors.setdefault(target, {})[split[1]] = tensor
    return plan


# ------------------------------------------------------------------------------ merging
def lora_delta(down: torch.Tensor, up: torch.Tensor, weight_shape: torch.Size) -> torch.Tensor:
    """up @ down for Linear (2-D factors) and Conv2d (down: r x in x kh x kw, up: out x r x 1 x 1)."""
    product = up.flatten(1).float() @ down.flatten(1).float()
    return product.reshape(weight_shape)


def check_factors(layer: torch.nn.Module, factors: dict[str, torch.Tensor], where: str) -> None:
    down, up = factors["down"], factors["up"]
    fits = up.flatten(1).shape[1] == down.shape[0] and up.shape[0] * down.flatten(1).shape[1] == layer.weight.numel()
    if not fits:
        raise ModelError(
            f"{where}: LoRA factors up {tuple(up.shape)} and down {tuple(down.shape)} do not fit the layer's "
            f"weight {tuple(layer.weight.shape)}"
        )


def merge_factors(layer: torch.nn.Module, factors: dict[str, torch.Tensor], weight: float) -> None:
    down, up = factors["down"], factors["up"]
    rank = down.shape[0]
    alpha = float(factors["alpha"]) if "alpha" in factors else float(rank)  # peft files: alpha = rank
    scale = weight * alpha / rank
    target = layer.weight
    with torch.no_grad():
        delta = lora_delta(down.to(target.device), up.to(target.device), target.shape)
        target.copy_((target.float() + scale * delta).to(target.dtype))


def read_lora_file(lora_path: str) -> dict[str, torch.Tensor]:
    if not lora_path.endswith(".safetensors"):
        raise ModelError(f"LoRA file {lora_path} is not a .safetensors file; only safetensors LoRAs are loaded")
    return read_state_dict(lora_path)


def merge_lora(root_modules: dict[str, torch.nn.Module], lora_path: str, weight: float = 1.0) -> int:
    """Merge the LoRA at `lora_path` into the modules (in place); returns the number of layers changed.
    `root_modules` maps a prefix to a module, e.g. {"unet": unet, "text_encoder": te, "text_encoder_2": te2}."""
    state_dict = read_lora_file(lora_path)
    plan = plan_lora(root_modules, state_dict)
    complete = {target: f for target, f in plan.factors.items() if "down" in f and "up" in f}
    if not complete:
        raise ModelError(
            f"LoRA file {lora_path}: none of its {len(state_dict)} keys match a layer of "
            f"{', '.join(root_modules)} (a LoRA for another base model, or not a LoRA file?)"
        )
    incomplete = len(plan.factors) - len(complete)
    if plan.unmatched or incomplete:
        logger.warning(
            "LoRA %s: %d keys match no layer, %d layers lack a down or up factor; skipped",
            lora_path,
            len(plan.unmatched),
            incomplete,
        )
    layers = {target: root_modules[target[0]].get_submodule(target[1]) for target in complete}
    for (root, name), factors in complete.items():  # check all before changing any
        check_factors(layers[(root, name)], factors, f"LoRA file {lora_path}, layer {root}.{name}")
    for target, factors in complete.items():
        merge_factors(layers[target], factors, weight)
    return len(complete)
