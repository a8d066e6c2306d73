"""Stand-in of `modules.ui_components`: InputAccordion (a checkbox whose value is the open state,
used as a layout block) and ToolButton, on top of the gradio stand-in."""

import gradio as gr


class ToolButton(gr.Button):
    pass


class InputAccordion(gr.Checkbox):
    def __init__(self, value, **kwargs):
        super().__init__(value, **kwargs)
