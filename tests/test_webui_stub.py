"""The stand-in host itself (tests/host_stub): it is visible only inside `installed()`, every test
gets a fresh copy, and where it imitates documented host behaviour it agrees with the host's own
examples (prompt attention syntax, infotext quoting, sequence numbers)."""

import importlib
import importlib.util
import os
import sys
import types

import host_stub
import pytest


def test_the_stub_is_visible_only_inside_the_block(tmp_path):
    with host_stub.installed(tmp_path) as host:
        assert host_stub.STUB_ROOT in sys.path
        import modules.shared

        assert modules.shared is host.shared
        assert os.path.dirname(modules.shared.__file__) == os.path.join(host_stub.STUB_ROOT, "modules")
        job = host.adapter("job")
        assert job.shared is host.shared
    assert host_stub.STUB_ROOT not in sys.path
    for name in ("modules", "modules.shared", "gradio", "fastapi", "lib_elevator.webui.job", "host_stub.minihost"):
        assert name not in sys.modules, name
    assert importlib.util.find_spec("modules") is None
    assert not hasattr(sys.modules.get("lib_elevator.webui"), "job")
    with pytest.raises(ImportError):
        importlib.import_module("lib_elevator.webui.job")


def test_every_block_gets_a_fresh_host(tmp_path):
    with host_stub.installed(tmp_path / "a") as first:
        first.shared.state.interrupted = True
        first.shared.opts.data["videoelevator_offload"] = "always"
        first_job = first.adapter("job")
    with host_stub.installed(tmp_path / "b") as second:
        assert second.shared is not first.shared
        assert second.shared.state.interrupted is False
        assert "videoelevator_offload" not in second.shared.opts.data
        assert second.adapter("job") is not first_job and second.adapter("job").shared is second.shared
        assert second.paths.models_path == str(tmp_path / "b" / "models")


def test_a_real_webui_on_the_path_is_not_shadowed(tmp_path):
    real = types.ModuleType("modules")
    real.__file__ = "/opt/stable-diffusion-webui/modules/__init__.py"
    sys.modules["modules"] = real
    try:
        with pytest.raises(RuntimeError, match="real WebUI"):
            with host_stub.installed(tmp_path):
                pass
    finally:
        del sys.modules["modules"]


def test_host_behaviour_the_adapter_relies_on(tmp_path):
    with host_stub.installed(tmp_path) as host:
        interrupted = host.sd_samplers_common.InterruptedException
        assert issubclass(interrupted, BaseException) and not issubclass(interrupted, Exception)
        opts = host.shared.opts
        assert getattr(opts, "hypertile_enable_unet", "missing") == "missing"  # unknown keys raise AttributeError
        opts.add_option("x_key", host.shared.OptionInfo(3, "x"))
        assert opts.x_key == 3 and opts.data["x_key"] == 3
        opts.x_key = 4
        assert opts.data["x_key"] == 4


# The examples of the host's parse_prompt_attention docstring (modules/prompt_parser.py).
PROMPT_EXAMPLES = [
    ("normal text", [["normal text", 1.0]]),
    ("an (important) word", [["an ", 1.0], ["important", 1.1], [" word", 1.0]]),
    ("(unbalanced", [["unbalanced", 1.1]]),
    ("\\(literal\\]", [["(literal]", 1.0]]),
    ("(unnecessary)(parens)", [["unnecessaryparens", 1.1]]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            ["a ", 1.0],
            ["house", 1.573],
            [" ", 1.1],
            ["on", 1.0],
            [" a ", 1.1],
            ["hill", 0.55],
            [", sun, ", 1.1],
            ["sky", 1.4641],
            [".", 1.1],
        ],
    ),
]


@pytest.mark.parametrize("text, expected", PROMPT_EXAMPLES)
def test_prompt_attention_parser_matches_the_host_examples(tmp_path, text, expected):
    with host_stub.installed(tmp_path):
        from modules.prompt_parser import parse_prompt_attention

        parsed = parse_prompt_attention(text)
    assert [part[0] for part in parsed] == [part[0] for part in expected]
    assert [part[1] for part in parsed] == pytest.approx([part[1] for part in expected])


def test_infotext_quoting_matches_the_host(tmp_path):
    with host_stub.installed(tmp_path) as host:
        infotext = host.infotext_utils
        assert infotext.quote("plain") == "plain" and infotext.quote(7) == 7
        assert infotext.quote('a, "b": c') == '"a, \\"b\\": c"'
        line = infotext.create_line({"Steps": 20, "Hash": None, "Tiling": "Tiling", "K": 'v, "w"'})
        assert line == 'Steps: 20, Tiling, K: "v, \\"w\\""'
        assert infotext.parse_line('Steps: 20, K: "v, \\"w\\"", Size: 64x64') == {
            "Steps": "20",
            "K": 'v, "w"',
            "Size": "64x64",
        }


def test_sequence_numbers_and_file_name_patterns(tmp_path):
    with host_stub.installed(tmp_path) as host:
        images = host.images
        folder = tmp_path / "out"
        folder.mkdir()
        assert images.get_next_sequence_number(str(folder), "") == 0
        for name in ("00004-a.png", "00011-b-c.gif", "notes.txt", "x-00099.png"):
            (folder / name).write_bytes(b"")
        assert images.get_next_sequence_number(str(folder), "") == 12
        p = types.SimpleNamespace(steps=20, sampler_name="DPM++ 2M", batch_size=4)
        generator = images.FilenameGenerator(p, 42, "a cat: on/a mat", None)
        assert generator.apply("[seed]-[prompt]-[steps]-[unknown]") == "42-a_cat__on_a_mat-20-[unknown]"
        assert generator.apply("[prompt_spaces] [none]") == "a cat_ on_a mat "
