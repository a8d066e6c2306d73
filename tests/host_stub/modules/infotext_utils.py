"""Stand-in of the host's infotext writing and reading for `key: value` pairs (infotext_utils.py):
a value containing ',', ':' or a newline is written JSON-quoted; reading splits the last line into
pairs, a double-quoted value running to its closing unescaped quote and being JSON-unquoted."""

from __future__ import annotations

import json


def quote(value):
    text = str(value)
    if "," not in text and ":" not in text and "\n" not in text:
        return value
    return json.dumps(value, ensure_ascii=False)


def unquote(text: str):
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def create_line(params: dict) -> str:
    """The `k: v, k: v` line of `create_infotext` (None values dropped, `k` alone when k == v)."""
    return ", ".join(
        key if key == value else f"{key}: {quote(value)}" for key, value in params.items() if value is not None
    )


def parse_line(line: str) -> dict:
    """The pairs of one `k: v, k: v` line."""
    result, i = {}, 0
    while i < len(line):
        colon = line.find(":", i)
        if colon < 0:
            break
        key = line[i:colon].strip()
        j = colon + 1
        while j < len(line) and line[j] == " ":
            j += 1
        if j < len(line) and line[j] == '"':
            k = j + 1
            while k < len(line) and line[k] != '"':
                k += 2 if line[k] == "\\" else 1
            value, i = unquote(line[j : k + 1]), k + 1
            comma = line.find(",", i)
            i = len(line) if comma < 0 else comma + 1
        else:
            comma = line.find(",", j)
            end = len(line) if comma < 0 else comma
            value, i = line[j:end].strip(), end + 1
        result[key] = value
    return result


def parse_generation_parameters(text: str) -> dict:
    """Prompt, negative prompt and the pairs of the last line."""
    *lines, last = text.strip().split("\n")
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:") :].strip()
        (negative if in_negative else prompt).append(line)
    return {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative), **parse_line(last)}


def paste_values(paste_fields, params: dict) -> list:
    """The value each `(component, key)` paste field gets (connect_paste): unchanged when the key is
    missing, else the pasted value converted to the type of the component's value ("False" -> False
    for booleans, ints parsed as float)."""
    values = []
    for component, key in paste_fields:
        value = key(params) if callable(key) else params.get(key)
        if value is None:
            values.append(component.value)
            continue
        kind = type(component.value)
        if kind is bool and value == "False":
            values.append(False)
        elif kind is int:
            values.append(float(value))
        else:
            values.append(kind(value))
    return values
