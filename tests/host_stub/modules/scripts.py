"""Stand-in of `modules.scripts`: the Script base class, the AlwaysVisible marker and `scripts_data`
(the loaded scripts: entries with `script_class` and `module`, empty unless a test adds one)."""

AlwaysVisible = object()
scripts_data: list = []


class Script:
    name = None
    filename = None
    args_from = None
    args_to = None
    is_txt2img = False
    is_img2img = False
    infotext_fields = None
    paste_field_names = None
    on_before_component_elem_id = None
    on_after_component_elem_id = None

    def title(self):
        raise NotImplementedError

    def show(self, is_img2img):
        return True

    def ui(self, is_img2img):
        pass

    def on_before_component(self, callback, *, elem_id):
        if self.on_before_component_elem_id is None:
            self.on_before_component_elem_id = []
        self.on_before_component_elem_id.append((elem_id, callback))

    def on_after_component(self, callback, *, elem_id):
        if self.on_after_component_elem_id is None:
            self.on_after_component_elem_id = []
        self.on_after_component_elem_id.append((elem_id, callback))
