"""Stand-in of `modules.prompt_parser.parse_prompt_attention`: a prompt with attention syntax as
[[text, weight], ...]. Handles `(text)` (x1.1), `[text]` (/1.1), `(text:w)`, backslash escapes
and unbalanced brackets (applied to the end), merging neighbours of equal weight. `SdConditioning`: the
prompt list with width/height/is_negative_prompt that the host hands to `get_learned_conditioning`."""

from __future__ import annotations

import re

_WEIGHT = re.compile(r":\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*$")
_UP, _DOWN = 1.1, 1 / 1.1


def parse_prompt_attention(text: str):
    parts: list[list] = []
    opened: list[tuple[str, int]] = []
    buffer = ""

    def flush():
        nonlocal buffer
        if buffer:
            parts.append([buffer, 1.0])
        buffer = ""

    def scale(start: int, factor: float):
        for part in parts[start:]:
            part[1] *= factor

    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            buffer += text[i + 1]
            i += 2
            continue
        if char in "([":
            flush()
            opened.append((char, len(parts)))
        elif char == ")" and opened and opened[-1][0] == "(":
            weight = _UP
            match = _WEIGHT.search(buffer)
            if match:
                buffer, weight = buffer[: match.start()], float(match.group(1))
            flush()
            scale(opened.pop()[1], weight)
        elif char == "]" and opened and opened[-1][0] == "[":
            flush()
            scale(opened.pop()[1], _DOWN)
        else:
            buffer += char
        i += 1
    flush()
    for bracket, start in opened:
        scale(start, _UP if bracket == "(" else _DOWN)
    merged: list[list] = []
    for part in parts:
        if merged and merged[-1][1] == part[1]:
            merged[-1][0] += part[0]
        else:
            merged.append(part)
    return merged or [["", 1.0]]


class SdConditioning(list):
    """The host's prompt list that carries the image size and whether it holds negative prompts."""

    def __init__(self, prompts, is_negative_prompt=False, width=None, height=None, copy_from=None):
        super().__init__(prompts)
        copy_from = prompts if copy_from is None else copy_from
        self.is_negative_prompt = is_negative_prompt or getattr(copy_from, "is_negative_prompt", False)
        self.width = width or getattr(copy_from, "width", None)
        self.height = height or getattr(copy_from, "height", None)
