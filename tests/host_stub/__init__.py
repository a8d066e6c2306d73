"""A small stand-in of the AUTOMATIC1111 WebUI (v1.10.1) module API that the adapter in
`lib_elevator/webui/` and `scripts/videoelevator.py` import, for CI runs without a WebUI.

Layout: `modules/` mirrors just the host names the adapter uses (`modules.shared`, `devices`,
`paths`, `prompt_parser`, `sd_samplers_common`, `images`, `sd_unet`, `lowvram`, `scripts`,
`script_callbacks`, `ui_components`, `infotext_utils`); `gradio/` and `fastapi/` are minimal
stand-ins of the two host dependencies the adapter touches (neither is installed in CI).
`samplers.py` (sampler functions with the host's calling conventions, an exact denoiser) and
`minihost.py` (a fake checkpoint, CFG denoiser and txt2img sampling call) are test helpers that
do not need the stub on `sys.path`.

`installed()` puts this folder first on `sys.path` for the duration of one test and removes it,
with every module imported from it and every adapter module bound to it, afterwards, so the rest
of the suite (and the real-host tests) never see the stand-in.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys

STUB_ROOT = os.path.dirname(os.path.abspath(__file__))
STUB_PACKAGES = ("modules", "gradio", "fastapi")


ADAPTER = "lib_elevator.webui"


def _from_stub(module) -> bool:
    path = os.path.abspath(getattr(module, "__file__", None) or "")
    return path.startswith(STUB_ROOT + os.sep) and path != os.path.join(STUB_ROOT, "__init__.py")


def _forget(names) -> None:
    for name in names:
        module = sys.modules.pop(name, None)
        parent_name, _, child = name.rpartition(".")
        parent = sys.modules.get(parent_name)
        if module is not None and parent is not None and getattr(parent, child, None) is module:
            delattr(parent, child)


def purge() -> None:
    """Forget the stub's modules and every adapter module (`lib_elevator.webui.*`), which may be
    bound to them; the adapter is imported afresh against the next stub."""
    _forget(
        name
        for name, module in list(sys.modules.items())
        if (module is not None and _from_stub(module)) or name.startswith(ADAPTER + ".")
    )


class Host:
    """The stub's modules, fresh for one test, plus the adapter modules imported against them."""

    def __init__(self, root: str):
        self.shared = importlib.import_module("modules.shared")
        self.devices = importlib.import_module("modules.devices")
        self.paths = importlib.import_module("modules.paths")
        self.images = importlib.import_module("modules.images")
        self.sd_samplers_common = importlib.import_module("modules.sd_samplers_common")
        self.sd_unet = importlib.import_module("modules.sd_unet")
        self.lowvram = importlib.import_module("modules.lowvram")
        self.scripts = importlib.import_module("modules.scripts")
        self.script_callbacks = importlib.import_module("modules.script_callbacks")
        self.infotext_utils = importlib.import_module("modules.infotext_utils")
        self.gradio = importlib.import_module("gradio")
        self.fastapi = importlib.import_module("fastapi")
        self.paths.models_path = os.path.join(root, "models")
        self.paths.extensions_dir = os.path.join(root, "extensions")
        self.outputs_root = os.path.join(root, "outputs")
        os.makedirs(self.paths.models_path, exist_ok=True)
        os.makedirs(self.paths.extensions_dir, exist_ok=True)

    @staticmethod
    def adapter(name: str):
        """`lib_elevator.webui.<name>`, imported against this stub."""
        return importlib.import_module(f"lib_elevator.webui.{name}")

    def load_script(self, path: str):
        """Run a `scripts/*.py` file as the host does (a standalone module named after the file)."""
        import importlib.util

        spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


@contextlib.contextmanager
def installed(root: str):
    """The stub on `sys.path` (first) for the duration of the block; `root` holds its folders."""
    real = sys.modules.get("modules")
    if real is not None and not _from_stub(real):
        raise RuntimeError(f"a real WebUI `modules` package is imported ({real!r}); the stub would shadow it")
    # A real gradio/fastapi (where installed) steps aside for the block and comes back afterwards.
    hidden = {
        name: sys.modules.pop(name)
        for name in list(sys.modules)
        if name.split(".")[0] in STUB_PACKAGES and not _from_stub(sys.modules[name])
    }
    purge()
    sys.path.insert(0, STUB_ROOT)
    importlib.invalidate_caches()
    try:
        yield Host(os.fspath(root))
    finally:
        while STUB_ROOT in sys.path:
            sys.path.remove(STUB_ROOT)
        purge()
        sys.modules.update(hidden)
        importlib.invalidate_caches()
