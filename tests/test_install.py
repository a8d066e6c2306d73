"""install.py, as the WebUI runs it at start (working directory = the WebUI's root, `launch` importable):
what it asks pip for, per host, and that the host's own packages are held where they are."""

import importlib.util
import os
import sys
import types

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def install(monkeypatch, tmp_path):
    calls = []
    launch = types.ModuleType("launch")
    launch.run_pip = lambda command, desc: calls.append((command, open(command.split('-c "')[1].rstrip('"')).read()))
    monkeypatch.setitem(sys.modules, "launch", launch)
    monkeypatch.chdir(tmp_path)  # the host's root, where requirements_versions.txt lives
    spec = importlib.util.spec_from_file_location("videoelevator_install", os.path.join(ROOT, "install.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # runs main() against this environment (everything is installed here)
    calls.clear()
    versions = {"torch": "2.3.1", "transformers": "4.46.1", "huggingface_hub": "0.26.2"}
    monkeypatch.setattr(module, "installed", versions.get)
    return types.SimpleNamespace(module=module, calls=calls, root=tmp_path, versions=versions)


def test_forge_gets_the_diffusers_it_pins(install):
    (install.root / "requirements_versions.txt").write_text("gradio==4.40.0\ndiffusers==0.31.0  # Forge\n")
    install.module.main()
    [(command, constraints)] = install.calls
    assert command.startswith("install diffusers==0.31.0 imageio-ffmpeg==0.6.0 -c ")
    assert set(constraints.split()) == {"torch==2.3.1", "transformers==4.46.1", "huggingface_hub==0.26.2"}


def test_automatic1111_pins_no_diffusers_and_gets_the_newest_that_imports(install):
    (install.root / "requirements_versions.txt").write_text("transformers==4.30.2\n")
    install.module.main()
    [(command, _)] = install.calls
    assert command.startswith("install diffusers==0.36.0 imageio-ffmpeg==0.6.0 -c ")


def test_what_is_installed_is_left_alone(install):
    install.versions.update({"diffusers": "0.31.0", "imageio-ffmpeg": "0.5.1"})
    install.module.main()
    assert install.calls == []
