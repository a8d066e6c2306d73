"""A headless Chromium driven over the W3C WebDriver protocol (chromedriver), with nothing but urllib:
enough to open a WebUI page, click, read the DOM and the console, and take screenshots.

Needs Debian's `chromium` and `chromium-driver` (/usr/bin/chromium, /usr/bin/chromedriver).

    .venv/bin/python tools/browser.py http://127.0.0.1:7882/ --click "#videoelevator-checkbox input" \
        --screenshot /tmp/page.png
"""

from __future__ import annotations

import argparse
import base64
import json
import socket
import subprocess
import time
import urllib.error
import urllib.request

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C key of an element reference


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Browser:
    def __init__(self, width: int = 1400, height: int = 2200, driver: str = "/usr/bin/chromedriver",
                 binary: str = "/usr/bin/chromium"):
        self.port = free_port()
        self.process = subprocess.Popen([driver, f"--port={self.port}"], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{self.port}"
        for _ in range(100):
            try:
                self._call("GET", "/status")
                break
            except OSError:
                time.sleep(0.1)
        options = {"binary": binary, "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                                              f"--window-size={width},{height}"]}
        capabilities = {"browserName": "chrome", "goog:chromeOptions": options, "goog:loggingPrefs": {"browser": "ALL"}}
        session = self._call("POST", "/session", {"capabilities": {"alwaysMatch": capabilities}})
        self.session = f"/session/{session['sessionId']}"

    def _call(self, method: str, path: str, payload=None):
        data = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                return json.loads(response.read())["value"]
        except urllib.error.HTTPError as error:
            raise RuntimeError(f"WebDriver {method} {path}: {error.read().decode()[:500]}") from None

    def call(self, method: str, path: str, payload=None):
        return self._call(method, self.session + path, payload)

    def open(self, url: str) -> None:
        self.call("POST", "/url", {"url": url})

    def run(self, script: str, *args):
        """Run JavaScript in the page (a function body: use `return`, arguments as `arguments[i]`)."""
        return self.call("POST", "/execute/sync", {"script": script, "args": list(args)})

    def wait_for(self, css: str, timeout: float = 120.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.call("POST", "/elements", {"using": "css selector", "value": css})
            if found:
                return found[0]
            time.sleep(0.5)
        raise TimeoutError(f"no element {css!r} after {timeout:.0f} s")

    def click(self, css: str) -> None:
        """A user's click on the first element matching `css` (it must be visible and not covered)."""
        element = self.wait_for(css)
        self.run("arguments[0].scrollIntoView({block: 'center'});", element)
        try:
            self.call("POST", f"/element/{element[ELEMENT]}/click", {})
        except RuntimeError as error:
            raise RuntimeError(f"cannot click {css!r}: {str(error)[:200]}") from None

    def screenshot(self, path: str) -> None:
        with open(path, "wb") as f:
            f.write(base64.b64decode(self.call("GET", "/screenshot")))

    def console(self) -> list[dict]:
        """Browser console entries since the last call ({"level", "message"})."""
        return self._call("POST", self.session + "/se/log", {"type": "browser"})

    def close(self) -> None:
        try:
            self._call("DELETE", self.session)
        finally:
            self.process.terminate()
            self.process.wait(timeout=30)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--wait", default="#videoelevator", help="CSS selector to wait for")
    parser.add_argument("--click", action="append", default=[], help="CSS selector to click, in order")
    parser.add_argument("--screenshot")
    args = parser.parse_args()
    with Browser() as browser:
        browser.open(args.url)
        browser.wait_for(args.wait)
        for css in args.click:
            browser.click(css)
            time.sleep(1)
        if args.screenshot:
            browser.screenshot(args.screenshot)
        for entry in browser.console():
            print(f"console {entry['level']}: {entry['message']}")


if __name__ == "__main__":
    main()
