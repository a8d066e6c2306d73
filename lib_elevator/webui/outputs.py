"""Where the videos go and how they are reported.

Videos are written for every batch (one video per batch count) into their own folder beside the
txt2img images (default `outputs/txt2img-videos`, changeable in Settings), named with the host's
file-name pattern and sequence number. They are written even when saving images is off (the API
default): the video is the product. The frames themselves are saved by the host as usual.

Reporting: `extra_generation_params["videoelevator"]` lists the videos with their paths (the
host's Processed JSON carries that dict: the API's `info`, the UI's hidden generation-info box).
UI — a line per video under the generation info, animated GIF/WEBP added to the gallery, the
request's first MP4 in the extension's video player (ui.video_of reads it from that request's
generation info); API — the response's `images` stay exactly the frames, and each video entry
also carries its base64 contents (no second request needed).
"""

from __future__ import annotations

import base64
import os
import re

from modules import images, shared

from lib_elevator.video_io import WrittenVideo, write_video

INFO_KEY = "videoelevator"
MAX_NAME = 120
MAX_REMEMBERED = 10_000
# The MP4s this server wrote (absolute paths), oldest first: the only files the UI's player may show.
# It is not "the last video": each browser's player shows the one named in its own request's info.
_written_mp4s: dict[str, None] = {}


def video_folder(p) -> str:
    configured = shared.opts.data.get("videoelevator_outdir", "")
    root = configured or os.path.join(os.path.dirname(os.path.normpath(p.outpath_samples)), "txt2img-videos")
    if shared.opts.data.get("save_to_dirs", True):
        pattern = shared.opts.data.get("directories_filename_pattern", "") or "[date]"
        root = os.path.join(root, images.FilenameGenerator(p, p.seeds[0], p.prompts[0], None).apply(pattern))
    return root


def safe_name(name: str) -> str:
    """A file name that every file system accepts, without path separators, of bounded length."""
    name = re.sub(r'[\\/:*?"<>|\x00-\x1f]', "_", name).strip(" .")
    return name[:MAX_NAME] or "video"


def video_base_name(p, folder: str) -> str:
    pattern = shared.opts.data.get("samples_filename_pattern", "") or "[seed]-[prompt_spaces]"
    name = images.FilenameGenerator(p, p.seeds[0], p.prompts[0], None).apply(pattern)
    number = images.get_next_sequence_number(folder, "")
    return f"{number:05}-{safe_name(name)}"


def write_batch(p, settings, frames, batch_number: int) -> WrittenVideo:
    folder = video_folder(p)
    os.makedirs(folder, exist_ok=True)
    written = write_video(frames, os.path.join(folder, video_base_name(p, folder)), settings.formats, settings.fps)
    if "MP4" in written.paths:
        _written_mp4s[os.path.abspath(written.paths["MP4"])] = None
        while len(_written_mp4s) > MAX_REMEMBERED:
            del _written_mp4s[next(iter(_written_mp4s))]
    return written


def is_written_mp4(path: str) -> bool:
    """Whether this server wrote the MP4 at `path` (the paths that `report` lists are absolute)."""
    return os.path.abspath(path) in _written_mp4s


class VideoReport(dict):
    """The videos of a request, in the response's `info` (`extra_generation_params`). A dict for JSON;
    callable, returning None, so that an infotext built later from the same `extra_generation_params`
    (the next cell of an X/Y/Z plot) leaves it out, as the host does with None values."""

    def __call__(self, **kwargs):
        return None


def report(p, processed, videos: list[WrittenVideo]) -> None:
    entries, lines = [], []
    for batch, written in enumerate(videos):
        for fmt, path in written.paths.items():
            entry = {"batch": batch, "format": fmt, "path": os.path.abspath(path)}
            if p.is_api and fmt != "PNG":
                with open(path, "rb") as f:
                    entry["base64"] = base64.b64encode(f.read()).decode("ascii")
            entries.append(entry)
            lines.append(f"VideoElevator {fmt}: {os.path.abspath(path)}")
            if not p.is_api and fmt in ("GIF", "WEBP"):
                processed.images.append(path)  # the gallery plays animated images given by path
        for fmt, error in written.errors.items():
            lines.append(f"VideoElevator could not write {fmt} ({error}); the other outputs and the frames are kept")
    errors = [{"batch": b, "format": f, "error": e} for b, w in enumerate(videos) for f, e in w.errors.items()]
    earlier = processed.extra_generation_params.get(INFO_KEY)
    if isinstance(earlier, VideoReport):  # the X/Y/Z plot's cells share this dict: list every cell's videos
        entries, errors = earlier["videos"] + entries, earlier["errors"] + errors
    processed.extra_generation_params[INFO_KEY] = VideoReport(videos=entries, errors=errors)
    processed.comments = "\n".join(filter(None, [processed.comments, *lines]))
