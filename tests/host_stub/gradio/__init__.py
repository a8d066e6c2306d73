"""A minimal stand-in of gradio 3 for building the adapter's controls without a UI: every component
keeps its constructor arguments, `.value`, and the events registered on it; layout blocks are
context managers; `update(**kw)` is a dict like gradio 3's."""

from __future__ import annotations


class Component:
    def __init__(self, *args, value=None, **kwargs):
        if args and value is None:
            value = args[0]
        self.value = value
        self.args, self.kwargs = args, kwargs
        self.label = kwargs.get("label")
        self.elem_id = kwargs.get("elem_id")
        self.events: list[tuple[str, dict]] = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def _event(name):
        def register(self, fn=None, inputs=None, outputs=None, **kwargs):
            self.events.append((name, {"fn": fn, "inputs": inputs, "outputs": outputs, **kwargs}))

        return register

    change = _event("change")
    input = _event("input")  # gradio 3.41: fires on user edits only, not on programmatic updates
    click = _event("click")
    del _event


class Slider(Component):
    def __init__(self, minimum=0, maximum=100, value=None, **kwargs):
        super().__init__(value=value, **kwargs)
        self.minimum, self.maximum = minimum, maximum


class Checkbox(Component):
    pass


class Button(Component):
    pass


class Dropdown(Component):
    pass


class Radio(Component):
    pass


class CheckboxGroup(Component):
    pass


class Textbox(Component):
    pass


class Video(Component):
    pass


class Row(Component):
    pass


class Column(Component):
    pass


class Accordion(Component):
    pass


class Blocks(Component):
    pass


def update(**kwargs):
    return {"__type__": "update", **kwargs}
