"""Stand-in of the two `modules.images` helpers the adapter uses: the file-name pattern generator
(`[tag]` replacement, unknown tags kept literally, prompt text sanitised) and the next sequence
number of a folder (one more than the largest leading number of its entries, 0 when empty)."""

from __future__ import annotations

import datetime
import os
import re

_INVALID = '<>:"/\\|?*\n\r\t'
_TAG = re.compile(r"\[([^\[\]]+)\]")


def sanitize_filename_part(text, replace_spaces=True):
    if text is None:
        return None
    if replace_spaces:
        text = text.replace(" ", "_")
    text = "".join("_" if char in _INVALID else char for char in text)
    return text.lstrip(" ")[:128].rstrip(" .")


class FilenameGenerator:
    def __init__(self, p, seed, prompt, image, zip=False, basename=""):
        self.p, self.seed, self.prompt, self.image = p, seed, prompt, image

    def _value(self, tag: str):
        p = self.p
        values = {
            "seed": lambda: "" if self.seed is None else self.seed,
            "prompt": lambda: sanitize_filename_part(self.prompt),
            "prompt_spaces": lambda: sanitize_filename_part(self.prompt, replace_spaces=False),
            "steps": lambda: p.steps,
            "sampler": lambda: sanitize_filename_part(p.sampler_name, replace_spaces=False),
            "batch_size": lambda: p.batch_size,
            "date": lambda: datetime.datetime.now().strftime("%Y-%m-%d"),
            "none": lambda: "",
        }
        make = values.get(tag.lower())
        return None if make is None else make()

    def apply(self, pattern: str) -> str:
        def replace(match):
            value = self._value(match.group(1))
            return match.group(0) if value is None else str(value)

        return _TAG.sub(replace, pattern)


def get_next_sequence_number(path: str, basename: str) -> int:
    prefix = f"{basename}-" if basename else ""
    numbers = [-1]
    for entry in os.listdir(path):
        if entry.startswith(prefix):
            head = os.path.splitext(entry[len(prefix) :])[0].split("-")[0]
            if head.isdigit():
                numbers.append(int(head))
    return max(numbers) + 1
