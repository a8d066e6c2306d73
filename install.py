"""Run by the WebUI at start (`python install.py`, WebUI root on PYTHONPATH): install what the venv
lacks, without moving any package the WebUI itself pinned.

- diffusers: models, schedulers and single-file loaders only. An installed diffusers is left alone
  (Forge installs its own pin, 0.31.0). Where none is installed: the version the host's own
  requirements_versions.txt pins, if it pins one (Forge: 0.31.0; with Forge's other pins 0.32.2 is
  the newest that imports, 0.33 needs huggingface_hub >= 0.27), else 0.36.0, the newest release whose
  AutoencoderKL imports next to AUTOMATIC1111 v1.10.1's transformers 4.30.2 (0.37 cannot, 0.40 needs
  huggingface_hub >= 1).
- imageio-ffmpeg: MP4 (H.264) encoding; its wheel ships the ffmpeg binary.
The pip call is constrained to the installed versions of the host's own packages, so pip either
finds versions that fit them or fails with a message; it never up- or downgrades them.
"""

import importlib.metadata
import os
import sys
import tempfile

import launch

DIFFUSERS = "diffusers==0.36.0"
HOST_PINS = "requirements_versions.txt"  # in the WebUI's root, the working directory of install.py
FFMPEG = "imageio-ffmpeg==0.6.0"
PROTECTED = ("torch", "torchvision", "transformers", "tokenizers", "huggingface_hub", "safetensors", "numpy",
             "gradio", "gradio_client", "fastapi", "pydantic", "accelerate", "Pillow", "protobuf")


def installed(name: str):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def constraints_file() -> str:
    pins = [f"{name}=={installed(name)}" for name in PROTECTED if installed(name)]
    handle, path = tempfile.mkstemp(prefix="videoelevator-constraints-", suffix=".txt")
    with os.fdopen(handle, "w") as f:
        f.write("\n".join(pins) + "\n")
    return path


def host_pin(name: str, path: str = HOST_PINS):
    """`name==version` as the host's requirements_versions.txt pins it, or None."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.split("#")[0].strip() for line in f]
    except OSError:
        return None
    return next((line for line in lines if line.lower().startswith(f"{name}==")), None)


def main() -> None:
    diffusers = host_pin("diffusers") or DIFFUSERS
    wanted = [spec for spec, name in ((diffusers, "diffusers"), (FFMPEG, "imageio-ffmpeg")) if not installed(name)]
    if not wanted:
        return
    constraints = constraints_file()
    try:
        launch.run_pip(f'install {" ".join(wanted)} -c "{constraints}"', f"VideoElevator requirements: {', '.join(wanted)}")
    except RuntimeError as error:
        print(f"VideoElevator: could not install {', '.join(wanted)} without changing the WebUI's own packages "
              f"({error}). Install a diffusers release that fits your transformers/huggingface_hub by hand.",
              file=sys.stderr)
    finally:
        os.remove(constraints)


main()
