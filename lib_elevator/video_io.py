"""Writing a video: MP4 (H.264), GIF, WEBP and PNG frames.

Frames come first: the PNG frames are written before any encoder runs, and a failing encoder
only loses its own format (its error is returned, not raised), so nothing generated is lost.
MP4 needs the ffmpeg binary that the imageio-ffmpeg wheel ships; GIF and WEBP use Pillow.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from lib_elevator.settings import FORMATS


@dataclass
class WrittenVideo:
    paths: dict[str, str] = field(default_factory=dict)  # format -> file (PNG -> folder of frames)
    errors: dict[str, str] = field(default_factory=dict)  # format -> why it could not be written


def check_frames(frames: np.ndarray) -> np.ndarray:
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (F, H, W, 3); got {frames.dtype} {frames.shape}")
    return frames


def write_png_frames(frames: np.ndarray, folder: str) -> str:
    os.makedirs(folder, exist_ok=True)
    for k, frame in enumerate(frames):
        Image.fromarray(frame).save(os.path.join(folder, f"{k:05d}.png"))
    return folder


def write_mp4(frames: np.ndarray, path: str, fps: int) -> str:
    import imageio_ffmpeg  # imported here: only MP4 needs it

    height, width = frames.shape[1:3]
    # yuv420p is what browsers and players decode; it needs even sizes (ours are multiples of 8)
    writer = imageio_ffmpeg.write_frames(
        path,
        (width, height),
        fps=fps,
        codec="libx264",
        pix_fmt_in="rgb24",
        pix_fmt_out="yuv420p",
        quality=8,
        macro_block_size=1,
        ffmpeg_log_level="error",
    )
    writer.send(None)
    try:
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
    finally:
        writer.close()
    return path


def write_animated(frames: np.ndarray, path: str, fps: int, fmt: str) -> str:
    images = [Image.fromarray(frame) for frame in frames]
    duration = int(round(1000 / fps))
    extra = {"lossless": False, "quality": 90} if fmt == "WEBP" else {"optimize": False, "disposal": 2}
    images[0].save(path, format=fmt, save_all=True, append_images=images[1:], duration=duration, loop=0, **extra)
    return path


def write_video(frames: np.ndarray, base_path: str, formats=("MP4",), fps: int = 8) -> WrittenVideo:
    """Write `frames` as `<base_path>.mp4/.gif/.webp` and/or PNG frames in `<base_path>-frames/`."""
    frames = check_frames(frames)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown video formats {unknown}; choose from {', '.join(FORMATS)}")
    os.makedirs(os.path.dirname(os.path.abspath(base_path)), exist_ok=True)
    result = WrittenVideo()
    if "PNG" in formats:
        result.paths["PNG"] = write_png_frames(frames, base_path + "-frames")
    for fmt in (f for f in FORMATS if f in formats and f != "PNG"):
        path = f"{base_path}.{fmt.lower()}"
        try:
            result.paths[fmt] = write_mp4(frames, path, fps) if fmt == "MP4" else write_animated(frames, path, fps, fmt)
        except Exception as e:  # one format failing must not lose the others or the frames
            result.errors[fmt] = f"{type(e).__name__}: {e}"
    return result


def read_mp4_frame_count(path: str) -> int:
    """Frames in a video file, decoded with the same ffmpeg (for tests and checks)."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(path)
    next(reader)  # the first item is the metadata
    return sum(1 for _ in reader)
