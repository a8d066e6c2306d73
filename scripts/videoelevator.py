"""VideoElevator in the WebUI's txt2img: the Script entry point (logic lives in lib_elevator.webui)."""

import modules.scripts as scripts
from modules import script_callbacks

from lib_elevator.webui import api, job, models, options, ui, xyz


class VideoElevatorScript(scripts.Script):
    def __init__(self):
        super().__init__()
        self.on_after_component(lambda event: ui.attach_player(self, event.component), elem_id="generation_info_txt2img")

    def title(self):
        return "VideoElevator"

    def show(self, is_img2img):
        return scripts.AlwaysVisible if not is_img2img else False

    def ui(self, is_img2img):
        return ui.build(self)

    def before_process(self, p, *args):
        job.before_process(p, args)

    def process_before_every_sampling(self, p, *args, **kwargs):
        job.process_before_every_sampling(p, kwargs["x"])

    def postprocess_batch(self, p, *args, **kwargs):
        job.postprocess_batch(p, kwargs.get("images"), kwargs.get("batch_number", 0))

    def postprocess(self, p, processed, *args):
        job.postprocess(p, processed)


script_callbacks.on_cfg_denoiser(job.on_cfg_denoiser)
script_callbacks.on_cfg_denoised(job.on_cfg_denoised)
script_callbacks.on_infotext_pasted(ui.on_infotext_pasted)
script_callbacks.on_ui_settings(options.on_ui_settings)
script_callbacks.on_app_started(api.on_app_started)
script_callbacks.on_script_unloaded(models.unload)
# X/Y/Z plot axes: the host's scripts/xyz_grid.py is loaded before extensions' scripts; registering again
# before the UI is built covers a host that orders them otherwise (it adds nothing twice)
xyz.register()
script_callbacks.on_before_ui(xyz.register)
