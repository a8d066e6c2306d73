"""Stand-in of `modules.shared`: the job state, the options, the command line and the loaded model.

Like the host's `Options`, `opts.<key>` reads `opts.data`, then a registered option's default, and
raises AttributeError for anything else (host `modules/options.py` __getattr__).
"""

from __future__ import annotations

import argparse


class State:
    """The fields of the host's `shared_state.State` the adapter reads and writes."""

    def __init__(self):
        self.interrupted = False
        self.skipped = False
        self.stopping_generation = False
        self.job = ""
        self.job_no = 0
        self.job_count = 0
        self.sampling_step = 0
        self.sampling_steps = 0
        self.textinfo = None
        self.current_latent = None

    def interrupt(self):
        self.interrupted = True

    def skip(self):
        self.skipped = True


class OptionInfo:
    def __init__(
        self,
        default=None,
        label="",
        component=None,
        component_args=None,
        onchange=None,
        section=None,
        refresh=None,
        comment_before="",
        comment_after="",
        infotext=None,
        restrict_api=False,
        category_id=None,
    ):
        self.default, self.label, self.component, self.component_args = default, label, component, component_args
        self.onchange, self.section, self.refresh, self.infotext = onchange, section, refresh, infotext
        self.comment_before, self.comment_after = comment_before, comment_after
        self.restrict_api, self.category_id = restrict_api, category_id
        self.do_not_save = False

    def info(self, text):
        self.comment_after += f"<span class='info'>({text})</span>"
        return self

    def needs_reload_ui(self):
        self.comment_after += " <span class='info'>(requires Reload UI)</span>"
        return self

    def needs_restart(self):
        self.comment_after += " <span class='info'>(requires restart)</span>"
        return self


class Options:
    def __init__(self, data: dict):
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "data_labels", {})

    def __getattr__(self, item):
        data = object.__getattribute__(self, "data")
        if item in data:
            return data[item]
        labels = object.__getattribute__(self, "data_labels")
        if item in labels:
            return labels[item].default
        raise AttributeError(item)

    def __setattr__(self, key, value):
        if key in self.data or key in self.data_labels:
            self.data[key] = value
        else:
            object.__setattr__(self, key, value)

    def add_option(self, key, info: OptionInfo):
        self.data_labels[key] = info
        if key not in self.data and not info.do_not_save:
            self.data[key] = info.default


# host defaults of the options the adapter reads (shared_options.py)
opts = Options(
    {
        "save_to_dirs": True,
        "directories_filename_pattern": "[date]",
        "samples_filename_pattern": "",
        "batch_cond_uncond": True,
        "return_grid": True,
    }
)
cmd_opts = argparse.Namespace(
    medvram=False, lowvram=False, medvram_sdxl=False, hide_ui_dir_config=False, videoelevator_models_dir=None
)
state = State()
sd_model = None  # a test puts its fake checkpoint here
hide_dirs = {"visible": not cmd_opts.hide_ui_dir_config}
restricted_opts: set[str] = {"samples_filename_pattern", "directories_filename_pattern", "outdir_samples"}
