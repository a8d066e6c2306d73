"""The txt2img page with the extension's javascript/ (javascript/videoelevator.js), in a headless Chromium
against a real WebUI started with its UI (AUTOMATIC1111 or Forge: `start.sh --ui`).

Runs where VIDEOELEVATOR_WEBUI_UI_URL names such a server and Debian's chromium + chromium-driver are
installed (tools/browser.py drives it); docs/webui-testing.md says how. The first test (hints cover
every control) needs neither and runs in CI.
"""

import os
import re
import shutil
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "javascript", "videoelevator.js")
URL = os.environ.get("VIDEOELEVATOR_WEBUI_UI_URL", "").rstrip("/")
needs_page = pytest.mark.skipif(
    not URL or not shutil.which("chromedriver"),
    reason="no WebUI page configured (set VIDEOELEVATOR_WEBUI_UI_URL to a host started with --ui; needs "
           "chromium and chromium-driver; see docs/webui-testing.md)",
)


def control_names():
    import tempfile

    from host_stub import installed

    with installed(tempfile.mkdtemp()) as host:
        return host.adapter("args").ARG_NAMES


def test_every_control_has_a_short_hint():
    with open(SCRIPT, encoding="utf-8") as f:
        source = f.read()
    block = source[source.index("const HINTS = {") : source.index("};", source.index("const HINTS = {"))]
    hints = dict(re.findall(r'^\s+(\w+): "(.+)",$', block, flags=re.MULTILINE))
    assert set(hints) == set(control_names())
    assert all(20 <= len(text) <= 160 for text in hints.values())


@pytest.fixture(scope="module")
def page():
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    from browser import Browser

    with Browser(width=1400, height=1600) as browser:
        browser.open(URL + "/")
        browser.wait_for("#videoelevator-visible-checkbox")
        time.sleep(3)  # onUiLoaded callbacks
        yield browser


def batch_size(page):
    return page.run("""
        const inputs = [...document.querySelectorAll('#txt2img_batch_size input')];
        return inputs.map(i => ({disabled: i.disabled, title: i.title}));""")


def ticked(page):
    return page.run("return document.querySelector('#videoelevator-checkbox input').checked")


@needs_page
def test_the_console_is_clean(page):
    """Nothing from the extension, and no script error (an offline machine cannot load the host's
    external resources: those network failures are the host's own and are left out)."""
    entries = page.console()
    errors = [e for e in entries if e["level"] == "SEVERE" and "net::ERR_" not in e["message"]]
    assert errors == []
    assert not [e for e in entries if "videoelevator" in e["message"].lower()]


@needs_page
def test_ticking_takes_over_batch_size_and_unticking_gives_it_back(page):
    before = batch_size(page)
    assert before and not any(i["disabled"] for i in before) and not ticked(page)
    page.click("#videoelevator-visible-checkbox")
    time.sleep(1)
    during = batch_size(page)
    assert ticked(page) and all(i["disabled"] for i in during)
    assert all("Set by VideoElevator" in i["title"] for i in during)
    page.click("#videoelevator-visible-checkbox")
    time.sleep(1)
    assert not ticked(page) and batch_size(page) == before
    assert not [e for e in page.console() if e["level"] == "SEVERE" and "net::ERR_" not in e["message"]]


@needs_page
def test_every_control_shows_its_hint_on_hover(page):
    names = control_names()
    titles = page.run("""
        const names = arguments[0];
        return names.map(n => {
            const e = n === 'enable' ? document.querySelector('#videoelevator > .label-wrap')
                                     : document.getElementById('videoelevator_' + n);
            return e ? e.title : null;
        });""", list(names))
    assert all(titles), dict(zip(names, titles))
    # the title is what the browser shows on hover: open the accordion, move the pointer onto a control
    page.click("#videoelevator > .label-wrap > .icon")
    time.sleep(1)
    element = page.wait_for("#videoelevator_frames")
    page.call("POST", "/actions", {"actions": [{"type": "pointer", "id": "mouse", "actions": [
        {"type": "pointerMove", "origin": element, "x": 0, "y": 0}]}]})
    try:
        assert page.run("return document.querySelector('#videoelevator_frames').matches(':hover')")
    finally:
        page.click("#videoelevator > .label-wrap > .icon")  # closed again, as the other tests expect
        time.sleep(1)


@needs_page
def test_nothing_changes_on_the_img2img_tab(page):
    page.click("#videoelevator-visible-checkbox")
    time.sleep(1)
    try:
        img2img = page.run("""
            const inputs = [...document.querySelectorAll('#img2img_batch_size input')];
            return {found: !!document.querySelector('#tab_img2img [id^=videoelevator]'),
                    disabled: inputs.some(i => i.disabled), count: inputs.length};""")
        assert img2img == {"found": False, "disabled": False, "count": img2img["count"]} and img2img["count"]
    finally:
        page.click("#videoelevator-visible-checkbox")
        time.sleep(1)


SET_VALUE = """
const [selector, value] = arguments;
const element = document.querySelector(selector);
const proto = element.tagName === 'TEXTAREA' ? HTMLTextAreaElement.prototype : HTMLInputElement.prototype;
Object.getOwnPropertyDescriptor(proto, 'value').set.call(element, value);
for (const type of ['input', 'change', 'blur']) element.dispatchEvent(new Event(type, {bubbles: true}));"""


def choose(page, dropdown, value):
    page.click(dropdown + " input")
    time.sleep(0.5)
    # gradio 3 (AUTOMATIC1111) names an option in data-value, gradio 4 (Forge) in aria-label
    page.click(f'{dropdown} li[data-value="{value}"], {dropdown} li[aria-label="{value}"]')
    time.sleep(1)


@needs_page
def test_an_xyz_plot_from_the_page(page):
    """The X/Y/Z plot script with the axis "[VideoElevator] Frames" = 2,3, typed into the page as a user
    would (a 64x64 job with 8 steps and a refine that fits them): the grid shows up with each cell's
    VideoElevator infotext. The model is the first the accordion lists."""
    page.open(URL + "/")
    page.wait_for("#videoelevator-visible-checkbox")
    time.sleep(3)
    page.click("#videoelevator-visible-checkbox")
    page.click("#videoelevator > .label-wrap > .icon")
    page.click("#videoelevator_advanced .label-wrap")
    for selector, value in [("#txt2img_width input[type=number]", "64"), ("#txt2img_height input[type=number]", "64"),
                            ("#txt2img_steps input[type=number]", "8"), ("#txt2img_prompt textarea", "a lighthouse"),
                            ("#videoelevator_refine_points textarea", "50%"),
                            ("#videoelevator_t2v_steps input[type=number]", "2")]:
        page.run(SET_VALUE, selector, value)
    choose(page, "#script_list", "X/Y/Z plot")
    choose(page, "#script_txt2img_xyz_plot_x_type", "[VideoElevator] Frames")
    page.run(SET_VALUE, "#script_txt2img_xyz_plot_x_values textarea", "2,3")
    time.sleep(1)
    page.click("#txt2img_generate")
    info = ""
    for _ in range(200):
        time.sleep(3)
        info = page.run("const e = document.querySelector('#html_info_txt2img'); return e ? e.innerText : ''")
        if "VideoElevator" in info:
            break
    assert '"frames":2' in info.replace("\\", "")
    assert page.run("return document.querySelectorAll('#txt2img_gallery img').length") >= 1
    page.run(SET_VALUE, "#txt2img_steps input[type=number]", "20")  # leave the page as it was for the others
    choose(page, "#script_list", "None")
