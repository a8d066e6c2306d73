"""What the WebUI keeps between jobs for an AnimateDiff/AnimateLCM motion module, with the base model's
UNet kept (as the extension used to) and dropped (as it does now). CPU only, about 30 s.

1. Full size, counted: SD1.5 (UNet2DConditionModel, AutoencoderKL, CLIP ViT-L/14 text tower) and a
   MotionAdapter shaped like mm_sd_v15_v2, built on the meta device (real shapes, no data); the motion UNet
   is `UNetMotionModel.from_unet2d(base UNet, adapter)`, also on meta. Weights = parameters and
   floating-point buffers, at 2 bytes (float16) or 4 bytes (float32) each.
2. Tiny, measured: the WebUI adapter's own loader (`lib_elevator.webui.models.get_t2v`, inside the test
   host stand-in) on a tiny SD1 checkpoint and a tiny v2 motion module. A weakref to the base UNet tells
   whether it was freed; every tensor alive in the process is summed before and after loading.

`python -m bench.animatediff_memory`
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import warnings
import weakref
from types import SimpleNamespace

import torch

from bench.common import add_threads_argument, apply_threads, machine, table
from bench.models import CLIP_L_TEXT, SD15_UNET, SD_VAE

# mm_sd_v15_v2: what lib_elevator.t2v.animatediff.motion_adapter_config reads off its weights (checked below).
MM_SD_V15_V2 = {
    "block_out_channels": (320, 640, 1280, 1280),
    "motion_layers_per_block": 2,
    "motion_transformer_layers_per_block": 1,
    "motion_mid_block_layers_per_block": 1,
    "motion_transformer_layers_per_mid_block": 1,
    "motion_num_attention_heads": 8,
    "motion_norm_num_groups": 32,
    "motion_max_seq_length": 32,
    "use_motion_mid_block": True,
}
GIB = 1024**3


def weights(module: torch.nn.Module) -> int:
    """Parameters and floating-point buffers (what `.to(dtype)` converts), in elements."""
    buffers = (b for b in module.buffers() if b.is_floating_point())
    return sum(t.numel() for t in module.parameters()) + sum(b.numel() for b in buffers)


def full_size() -> str:
    from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel, UNetMotionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from lib_elevator.t2v.animatediff import diffusers_motion_keys, motion_adapter_config
    from lib_elevator.tiny.t2v import original_motion_keys

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET)
        vae = AutoencoderKL(**SD_VAE)
        text = CLIPTextModel(CLIPTextConfig(**CLIP_L_TEXT))
        adapter = MotionAdapter(**MM_SD_V15_V2)
        motion_unet = UNetMotionModel.from_unet2d(unet, adapter)
    # The loader's view of these weights, through the original AnimateDiff key naming of the .ckpt files.
    read = motion_adapter_config(diffusers_motion_keys(original_motion_keys(adapter.state_dict())))
    assert read == MM_SD_V15_V2, f"the loader reads {read}"
    n = {"unet": weights(unet), "vae": weights(vae), "text": weights(text), "motion": weights(motion_unet)}
    motion_only = weights(adapter)

    def row(label, count):
        return [label, f"{count / 1e6:,.1f}M", f"{count * 2 / GIB:.2f}", f"{count * 4 / GIB:.2f}"]

    before = n["motion"] + n["text"] + n["vae"] + n["unet"]
    after = before - n["unet"]
    rows = [
        row(f"motion UNet ({(n['motion'] - motion_only) / 1e6:,.1f}M spatial + {motion_only / 1e6:,.1f}M motion)",
            n["motion"]),
        row("base text encoder (CLIP ViT-L/14)", n["text"]),
        row("base VAE", n["vae"]),
        row("base UNet", n["unet"]),
        row("before: all four", before),
        row("now: without the base UNet", after),
        row(f"saved ({(before - after) / before:.0%})", before - after),
    ]
    host = n["unet"] + n["vae"] + n["text"]
    return (
        table(["held by the extension between jobs", "weights", "float16 GiB", "float32 GiB"], rows,
              "Full size: SD1.5 + mm_sd_v15_v2 (real architectures on the meta device; config read back by the "
              "loader: same)")
        + f"\nwith the host's own SD1.5 model ({host * 2 / GIB:.2f} GiB in float16) also on the GPU (offload off): "
        f"{(before + host) * 2 / GIB:.2f} GiB before, {(after + host) * 2 / GIB:.2f} GiB now (float16)\n"
    )


def live_tensor_bytes() -> int:
    """Bytes of every distinct tensor storage alive in the process."""
    gc.collect()
    storages = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some objects warn when asked for their type
        for obj in gc.get_objects():
            if isinstance(obj, torch.Tensor) and obj.device.type != "meta":
                storage = obj.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def tiny_webui() -> str:
    from lib_elevator.tiny.t2i import tiny_unet_config, write_tiny_single_file
    from lib_elevator.tiny.t2v import write_tiny_motion_module
    from tests.host_stub import installed

    rows, mib = [], 1024**2
    with tempfile.TemporaryDirectory() as root:
        checkpoint = write_tiny_single_file(os.path.join(root, "checkpoints", "tiny-sd1.safetensors"), "sd1")
        config = tiny_unet_config("sd1")
        for keep in (True, False):
            with installed(root) as host:
                write_tiny_motion_module(
                    os.path.join(host.paths.models_path, "AnimateDiff", "mm_sd_v15_v2.safetensors"), "v2",
                    block_out_channels=config["block_out_channels"], layers_per_block=config["layers_per_block"],
                )
                models = host.adapter("models")
                host.shared.sd_model = SimpleNamespace(is_sd1=True, sd_checkpoint_info=SimpleNamespace(filename=checkpoint))
                load_base, unets, kept = models.load_base, [], []

                def spy(path, device, load_base=load_base, unets=unets, kept=kept, keep=keep):
                    base = load_base(path, device)
                    unets.append((weakref.ref(base.unet), weights(base.unet) * 4))
                    if keep:  # what the extension's base-model cache used to do
                        kept.append(base)
                    return base

                models.load_base = spy
                start = live_tensor_bytes()
                backend = models.get_t2v(models.resolve("mm_sd_v15_v2.safetensors"))
                held = live_tensor_bytes() - start
                (unet_ref, unet_bytes), = unets
                rows.append([
                    "base kept (before)" if keep else "base dropped (now)",
                    f"{held / mib:.2f}",
                    "alive" if unet_ref() is not None else "freed",
                    f"{unet_bytes / mib:.2f}",
                ])
                del backend, kept[:]
                models.unload()
    return table(
        ["after get_t2v", "tensors alive, MiB", "base UNet", "base UNet's weights, MiB"], rows,
        "Tiny, measured through the WebUI loader (tiny SD1 checkpoint + tiny v2 motion module, float32, CPU)",
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_threads_argument(parser, default=1)
    args = parser.parse_args(argv)
    apply_threads(args.threads)
    print(f"machine: {machine()}\n")
    print(full_size())
    print(tiny_webui())


if __name__ == "__main__":
    main()
