"""Tiny random-weight models built from the real architectures' classes, saved in the real on-disk
layouts. They drive the `--demo` run and the tests; nothing here is downloaded."""

import json
import os


def write_json(path: str, data: dict) -> None:
    """A config file of a tiny model's folder."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)


def demo_folders(cache: str) -> tuple[str, str]:
    """The tiny random-weight SD1 T2I and ZeroScope T2V folders of the demo, built once into `cache`."""
    from lib_elevator.tiny.t2i import build_tiny_t2i_folder
    from lib_elevator.tiny.t2v import build_tiny_zeroscope_folder

    t2i, t2v = os.path.join(cache, "tiny-sd1"), os.path.join(cache, "tiny-zeroscope")
    if not os.path.exists(os.path.join(t2i, "model_index.json")):
        build_tiny_t2i_folder(t2i, kind="sd1", seed=0)
    if not os.path.exists(os.path.join(t2v, "model_index.json")):
        build_tiny_zeroscope_folder(t2v, seed=0)
    return t2i, t2v
