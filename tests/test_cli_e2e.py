"""End to end through the command line, on tiny random-weight models saved in their real layouts."""

import os
import shutil

import numpy as np
import pytest
from PIL import Image

from lib_elevator.cli import main
from lib_elevator.video_io import read_mp4_frame_count

FAST = ["--frames", "4", "--width", "32", "--height", "32", "--steps", "10", "--t2v-steps", "2",
        "--refine-points", "20%,60%"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from lib_elevator.tiny.t2i import build_tiny_t2i_folder, tiny_unet_config
    from lib_elevator.tiny.t2v import build_tiny_animatelcm_folder, build_tiny_zeroscope_folder

    root = tmp_path_factory.mktemp("e2e-models")
    return {
        "sd1": build_tiny_t2i_folder(str(root / "sd1"), kind="sd1"),
        "sdxl": build_tiny_t2i_folder(str(root / "sdxl"), kind="sdxl"),
        "zeroscope": build_tiny_zeroscope_folder(str(root / "zeroscope")),
        "animatelcm": build_tiny_animatelcm_folder(str(root / "AnimateLCM"), unet_config=tiny_unet_config("sd1")),
    }


def generate(models, out, t2i="sd1", t2v="zeroscope", extra=()):
    return main(["generate", "--t2i", models[t2i], "--t2v", models[t2v], "--prompt", "a lighthouse",
                 "--out", str(out), *FAST, *extra])


def read_frames(folder):
    return np.stack([np.array(Image.open(os.path.join(folder, name))) for name in sorted(os.listdir(folder))])


def test_every_output_format_holds_every_frame(models, tmp_path, capsys):
    assert generate(models, tmp_path / "v.mp4", extra=["--formats", "mp4,gif,webp,png", "--fps", "6"]) == 0
    assert read_mp4_frame_count(str(tmp_path / "v.mp4")) == 4
    for ext in ("gif", "webp"):
        with Image.open(tmp_path / f"v.{ext}") as image:
            assert image.n_frames == 4 and image.size == (32, 32)
    frames = read_frames(tmp_path / "v-frames")
    assert frames.shape == (4, 32, 32, 3)
    assert "PNG:" in capsys.readouterr().out


def test_runs_are_deterministic_per_seed(models, tmp_path):
    for name, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        assert generate(models, tmp_path / f"{name}.png", extra=["--seed", seed]) == 0
    a, b, c = (read_frames(tmp_path / f"{name}-frames") for name in "abc")
    assert (a == b).all() and not (a == c).all()


def test_feed_forward_chunking_saves_memory_without_changing_the_video(models, tmp_path, capsys):
    """--t2v-ff-chunk (the setting behind the chunked GPU-memory figure) gives the same frames; a
    chunk that does not divide the sizes, or a backend without chunking, is a one-line error."""
    assert generate(models, tmp_path / "plain.png") == 0
    assert generate(models, tmp_path / "chunked.png", extra=["--t2v-ff-chunk", "2"]) == 0
    plain, chunked = read_frames(tmp_path / "plain-frames"), read_frames(tmp_path / "chunked-frames")
    assert np.abs(plain.astype(int) - chunked.astype(int)).max() <= 1
    capsys.readouterr()
    assert generate(models, tmp_path / "bad.png", extra=["--t2v-ff-chunk", "3"]) == 2
    assert "t2v_ff_chunk: feed-forward chunking of 3" in capsys.readouterr().err
    assert generate(models, tmp_path / "lcm.png", t2v="animatelcm", extra=["--t2v-ff-chunk", "2"]) == 2
    assert "--t2v-ff-chunk: animatelcm models do not run their feed-forward layers in chunks" in capsys.readouterr().err


def test_models_lists_what_cannot_run_with_the_reason(tmp_path, capsys):
    from lib_elevator.tiny.t2v import write_tiny_motion_module

    write_tiny_motion_module(str(tmp_path / "mm_sd_v15_v2.ckpt"), "v2", seed=2)
    assert main(["models", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("unusable") and "mm_sd_v15_v2.ckpt" in out and "pickled weights" in out
    assert main(["models", str(tmp_path), "--allow-pickle"]) == 0
    assert capsys.readouterr().out.startswith("animatediff")


def test_compat_authors_from_the_command_line(models, tmp_path, capsys):
    assert generate(models, tmp_path / "ours.png") == 0
    assert generate(models, tmp_path / "theirs.png", extra=["--compat", "authors"]) == 0
    ours, theirs = read_frames(tmp_path / "ours-frames"), read_frames(tmp_path / "theirs-frames")
    assert ours.shape == theirs.shape and not (ours == theirs).all()
    capsys.readouterr()
    assert generate(models, tmp_path / "odd.png", extra=["--compat", "authors", "--frames", "5"]) == 2
    assert "frames: compat=authors needs an even frame count" in capsys.readouterr().err


def test_animatelcm_with_its_preset(models, tmp_path):
    out = tmp_path / "lcm.gif"
    assert generate(models, out, t2v="animatelcm", extra=["--preset", "AnimateLCM-like"]) == 0
    with Image.open(out) as image:
        assert image.n_frames == 4


@pytest.mark.parametrize("t2v, window", [("zeroscope", 24), ("animatelcm", 16)])
def test_a_40_frame_video_is_refined_in_windows(models, tmp_path, monkeypatch, t2v, window):
    """40 frames: more than ZeroScope's 24-frame clips and than the motion module's 32 positions."""
    from lib_elevator.t2v import registry

    seen = []
    real_load = registry.load_t2v

    def load_and_watch(*args, **kwargs):
        backend = real_load(*args, **kwargs)
        real_output = backend.model_output
        backend.model_output = lambda video, t, context: seen.append(video.shape[2]) or real_output(video, t, context)
        return backend

    monkeypatch.setattr(registry, "load_t2v", load_and_watch)
    out = tmp_path / "long.mp4"
    assert generate(models, out, t2v=t2v, extra=["--frames", "40", "--steps", "6", "--refine-points", "50%"]) == 0
    assert read_mp4_frame_count(str(out)) == 40
    assert seen and set(seen) == {window}  # every T2V call saw one window of the model's native length


def test_a_window_the_motion_module_cannot_take_is_refused(models, tmp_path, capsys):
    capsys.readouterr()
    assert generate(models, tmp_path / "x.png", t2v="animatelcm", extra=["--frames", "40", "--t2v-window", "40"]) == 2
    err = capsys.readouterr().err
    assert "t2v_window: " in err and "takes at most 32 frames at once" in err


def test_sdxl_with_an_sd1_video_model_projects_latents(models, tmp_path, capsys):
    assert generate(models, tmp_path / "xl.gif", t2i="sdxl") == 0
    assert "'t2v': 4" in capsys.readouterr().err  # two refine points, two T2V steps each


@pytest.mark.parametrize("extra, message", [
    (["--frames", "1"], "frames: a video needs between 2"),
    (["--width", "36"], "width: must be a positive multiple of 8"),
    (["--refine-points", "99%"], "falls on step"),
    (["--t2v-steps", "40"], "do not fit"),
    (["--formats", "avi"], "formats"),
])
def test_bad_settings_exit_2_with_the_reason(models, tmp_path, capsys, extra, message):
    assert generate(models, tmp_path / "v.gif", extra=extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bad_model_paths_exit_2_naming_the_path(models, tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    corrupt = tmp_path / "corrupt-sd1"
    shutil.copytree(models["sd1"], corrupt)
    (corrupt / "unet" / "config.json").write_text("{not json")
    cases = [
        ("t2i", str(tmp_path / "missing"), "missing"),
        ("t2i", str(corrupt), "config.json"),
        ("t2i", str(text), "notes.txt"),
        ("t2v", str(tmp_path), str(tmp_path)),
        ("t2v", models["sd1"], models["sd1"]),
    ]
    for which, path, named in cases:
        paths = {"t2i": models["sd1"], "t2v": models["zeroscope"], which: path}
        code = main(["generate", "--t2i", paths["t2i"], "--t2v", paths["t2v"], "--prompt", "x",
                     "--out", str(tmp_path / "v.gif"), *FAST])
        err = capsys.readouterr().err
        assert code == 2 and named in err and "Traceback" not in err, (which, path, err)


def test_models_lists_what_a_folder_holds(models, tmp_path, capsys):
    assert main(["models", os.path.dirname(models["zeroscope"])]) == 0
    out = capsys.readouterr().out
    assert "zeroscope" in out and "animatelcm" in out and "sd1" not in out.split()
