"""Where the videos are written and how they are reported (lib_elevator/webui/outputs.py, and
job.postprocess_batch's frame conversion), inside the stand-in host."""

import base64
import datetime
import os
from types import SimpleNamespace

import host_stub
import numpy as np
import pytest
import torch
from PIL import Image

from lib_elevator.settings import Settings
from lib_elevator.video_io import WrittenVideo


@pytest.fixture
def webui(tmp_path):
    with host_stub.installed(tmp_path) as host:
        yield host


def job_p(host, **fields):
    values = dict(
        outpath_samples=os.path.join(host.outputs_root, "txt2img-images"),
        seeds=[123, 124],
        prompts=["a lighthouse: storm / night?"],
        prompt="a lighthouse: storm / night?",
        negative_prompt="",
        steps=10,
        sampler_name="Euler",
        batch_size=2,
        is_api=False,
    )
    values.update(fields)
    return SimpleNamespace(**values)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("plain name", "plain name"),
        ('a/b\\c:d*e?f"g<h>i|j', "a_b_c_d_e_f_g_h_i_j"),
        ("line\nbreak\ttab\x00nul", "line_break_tab_nul"),
        ("../../etc/passwd", "_.._etc_passwd"),
        ("  . trailing dots and spaces . ", "trailing dots and spaces"),
        ("..", "video"),
        ("", "video"),
        ("ünïcödé 雨", "ünïcödé 雨"),
    ],
)
def test_safe_name(webui, name, expected):
    assert webui.adapter("outputs").safe_name(name) == expected


def test_safe_name_is_bounded_and_never_a_path(webui):
    safe_name = webui.adapter("outputs").safe_name
    long = safe_name("x" * 500)
    assert long == "x" * 120
    for name in ("/", "a/" * 200, "\\\\server\\share", "C:\\Windows", os.sep.join(["..", "..", "x"])):
        result = safe_name(name)
        assert result and len(result) <= 120
        assert "/" not in result and "\\" not in result and os.sep not in result and result not in (".", "..")


def test_videos_go_beside_the_txt2img_images_in_a_dated_folder(webui):
    outputs = webui.adapter("outputs")
    today = datetime.datetime.now().strftime("%Y-%m-%d")
    p = job_p(webui)
    assert outputs.video_folder(p) == os.path.join(webui.outputs_root, "txt2img-videos", today)
    webui.shared.opts.data["directories_filename_pattern"] = "[seed]-[sampler]"
    assert outputs.video_folder(p) == os.path.join(webui.outputs_root, "txt2img-videos", "123-Euler")
    webui.shared.opts.data["save_to_dirs"] = False
    assert outputs.video_folder(p) == os.path.join(webui.outputs_root, "txt2img-videos")
    webui.shared.opts.data["videoelevator_outdir"] = "/videos"
    assert outputs.video_folder(p) == "/videos"
    # a trailing separator in the images folder changes nothing
    assert outputs.video_folder(job_p(webui, outpath_samples=p.outpath_samples + os.sep)) == "/videos"


def test_video_names_follow_the_host_pattern_and_sequence(webui, tmp_path):
    outputs = webui.adapter("outputs")
    folder = tmp_path / "videos"
    folder.mkdir()
    p = job_p(webui)
    first = outputs.video_base_name(p, str(folder))
    assert first == "00000-123-a lighthouse_ storm _ night_"
    (folder / f"{first}.gif").write_bytes(b"")
    (folder / "00007-older-frames").mkdir()
    assert outputs.video_base_name(p, str(folder)).startswith("00008-")
    webui.shared.opts.data["samples_filename_pattern"] = "[seed]/../[none]x:[steps]"
    name = outputs.video_base_name(p, str(folder))
    assert name == "00008-123_.._x_10" and os.sep not in name


def frames(count=3, height=16, width=24):
    grid = np.arange(count * height * width * 3).reshape(count, height, width, 3)
    return (grid * 7 % 256).astype(np.uint8)


def test_write_batch_writes_every_format(webui):
    outputs = webui.adapter("outputs")
    p = job_p(webui)
    settings = Settings(formats=("MP4", "GIF", "WEBP", "PNG"), fps=12)
    written = outputs.write_batch(p, settings, frames(), 0)
    assert written.errors == {}
    folder = outputs.video_folder(p)
    assert set(written.paths) == {"MP4", "GIF", "WEBP", "PNG"}
    assert all(os.path.dirname(path) == folder for path in written.paths.values())
    assert written.paths["GIF"].endswith("00000-123-a lighthouse_ storm _ night_.gif")
    with Image.open(written.paths["GIF"]) as gif:
        assert gif.n_frames == 3
    png = sorted(os.listdir(written.paths["PNG"]))
    assert png == ["00000.png", "00001.png", "00002.png"]
    assert np.array_equal(np.array(Image.open(os.path.join(written.paths["PNG"], png[1]))), frames()[1])
    assert os.path.getsize(written.paths["MP4"]) > 0
    second = outputs.write_batch(p, Settings(formats=("GIF",)), frames(), 1)
    assert os.path.basename(second.paths["GIF"]).startswith("00001-")
    # the UI's player may show the MP4s this server wrote, and nothing else
    assert outputs.is_written_mp4(written.paths["MP4"]) and outputs.is_written_mp4(os.path.abspath(written.paths["MP4"]))
    assert not outputs.is_written_mp4(second.paths["GIF"]) and not outputs.is_written_mp4(written.paths["GIF"])


def test_postprocess_batch_turns_decoded_images_into_uint8_frames(webui):
    job = webui.adapter("job")
    p = job_p(webui, seeds=[5, 6, 7])
    recorded = SimpleNamespace(settings=Settings(formats=("PNG",)), videos=[])
    setattr(p, job.JOB_ATTR, recorded)
    images = torch.rand(3, 3, 8, 16)
    images[0, 0, 0, 0], images[1, 1, 1, 1] = 1.7, -0.2  # out of range: clamped
    job.postprocess_batch(p, images, 0)
    (written,) = recorded.videos
    folder = written.paths["PNG"]
    expected = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for k in range(3):
        assert np.array_equal(np.array(Image.open(os.path.join(folder, f"{k:05d}.png"))), expected[k])
    job.postprocess_batch(p, None, 1)  # no images (e.g. an interrupted batch the host did not decode)
    job.postprocess_batch(job_p(webui), images, 0)  # not a VideoElevator job
    assert len(recorded.videos) == 1


def written_videos(tmp_path):
    def make(batch, formats):
        paths = {}
        for fmt in formats:
            path = tmp_path / (f"{batch:05d}-v-frames" if fmt == "PNG" else f"{batch:05d}-v.{fmt.lower()}")
            if fmt == "PNG":
                path.mkdir()
            else:
                path.write_bytes(f"{fmt} bytes of batch {batch}".encode())
            paths[fmt] = str(path)
        return paths

    return [
        WrittenVideo(make(0, ("MP4", "GIF", "PNG"))),
        WrittenVideo(make(1, ("WEBP",)), errors={"MP4": "RuntimeError: no ffmpeg"}),
    ]


def processed_for(frames_list):
    return SimpleNamespace(images=list(frames_list), extra_generation_params={}, comments="")


def test_ui_report_adds_animations_to_the_gallery_and_lines_to_the_info(webui, tmp_path):
    outputs = webui.adapter("outputs")
    videos = written_videos(tmp_path)
    images = [object(), object()]
    processed = processed_for(images)
    processed.comments = "earlier comment"
    outputs.report(job_p(webui, is_api=False), processed, videos)
    assert processed.images == [*images, videos[0].paths["GIF"], videos[1].paths["WEBP"]]
    info = processed.extra_generation_params["videoelevator"]
    assert [(e["batch"], e["format"]) for e in info["videos"]] == [(0, "MP4"), (0, "GIF"), (0, "PNG"), (1, "WEBP")]
    assert all("base64" not in e and os.path.isabs(e["path"]) for e in info["videos"])
    assert info["errors"] == [{"batch": 1, "format": "MP4", "error": "RuntimeError: no ffmpeg"}]
    lines = processed.comments.split("\n")
    assert lines[0] == "earlier comment"
    assert f"VideoElevator MP4: {os.path.abspath(videos[0].paths['MP4'])}" in lines
    assert any(line.startswith("VideoElevator could not write MP4 (RuntimeError: no ffmpeg)") for line in lines)


def test_api_report_keeps_the_frames_and_carries_the_videos_as_base64(webui, tmp_path):
    outputs = webui.adapter("outputs")
    videos = written_videos(tmp_path)
    images = [object(), object()]
    processed = processed_for(images)
    outputs.report(job_p(webui, is_api=True), processed, videos)
    assert processed.images == images  # the response's images stay exactly the frames
    entries = processed.extra_generation_params["videoelevator"]["videos"]
    for entry in entries:
        if entry["format"] == "PNG":
            assert "base64" not in entry
        else:
            with open(entry["path"], "rb") as f:
                assert base64.b64decode(entry["base64"]) == f.read()
    assert {e["format"] for e in entries if "base64" in e} == {"MP4", "GIF", "WEBP"}
