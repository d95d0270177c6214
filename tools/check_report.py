"""Open a run report in headless Chromium, take a screenshot of the whole page, and fail on
anything a reader would meet as a fault.

    python tools/check_report.py runs/<run>            # or runs/<run>/report.html
    python tools/check_report.py REPORT --screenshot shot.png --width 1400

Not a test (the suite tests the page's content without a browser): a check to run after
changing the report's look, then look at the screenshot. It drives Chromium through the
DevTools protocol over a pipe (``--remote-debugging-pipe``; nothing but the standard library)
with every host name unresolvable, and reports as problems: console errors and uncaught
exceptions, errors in the browser log (a resource that failed to load), any request that is
not a ``data:`` URI or the file itself (the page must not need the network), images that did
not decode, and elements wider than the page. Exit status: 0 clean, 1 problems found, 2 no
browser (set ``CHROMIUM`` to its path) or no report.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")
# Evaluated in the page once it has loaded: what a reader would see as broken.
PAGE_CHECKS = """(() => {
  const problems = [];
  for (const img of document.images) {
    if (!img.complete || img.naturalWidth === 0)
      problems.push(`image did not decode: ${img.alt || img.src.slice(0, 40)}`);
  }
  for (const el of document.querySelectorAll('[src], [href]')) {
    const url = el.getAttribute('src') || el.getAttribute('href');
    if (!url.startsWith('data:') && !url.startsWith('#'))
      problems.push(`external reference: ${url.slice(0, 80)}`);
  }
  const width = document.documentElement.clientWidth;
  for (const el of document.querySelectorAll('section, h1, p, table, img')) {
    const box = el.getBoundingClientRect();
    if (box.right > width + 1 && !el.closest('.scroll'))
      problems.push(`${el.tagName.toLowerCase()} ends at ${Math.round(box.right)}px > ${width}px`);
  }
  const sections = [...document.querySelectorAll('section')].map(s => s.id);
  return {problems, sections, height: document.documentElement.scrollHeight};
})()"""


class Browser:
    """A headless Chromium driven over ``--remote-debugging-pipe`` (fd 3 in, fd 4 out)."""

    def __init__(self, executable: str, profile: Path) -> None:
        to_browser, self._send_fd = os.pipe()
        self._recv_fd, from_browser = os.pipe()

        def wire_pipes() -> None:
            # In the child: the pipes become fds 3 and 4 (what the protocol expects), copied
            # above 10 first so that neither move overwrites the other; nothing else stays.
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser, from_browser)]
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)
            os.closerange(5, 1024)

        flags = ["--headless", "--disable-gpu", "--remote-debugging-pipe", "--no-first-run",
                 "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={profile}",
                 "--hide-scrollbars", "about:blank"]  # fmt: skip
        if os.geteuid() == 0:
            flags.insert(0, "--no-sandbox")  # Chromium refuses to run its sandbox as root
        self.process = subprocess.Popen(
            [executable, *flags],
            preexec_fn=wire_pipes,
            close_fds=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser)
        os.close(from_browser)
        self._buffer, self._next_id = b"", 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, session: str | None = None, timeout: float = 30, **params):
        """Send a command and return its result; events met meanwhile are kept in order."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._send_fd, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._receive(timeout)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 30) -> None:
        """Read messages until the event ``method`` arrives."""
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._receive(timeout))

    def _receive(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._recv_fd], [], [], left)[0]:
                raise TimeoutError(f"Chromium did not answer within {timeout} s")
            chunk = os.read(self._recv_fd, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe (did it start?)")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError, TimeoutError):
            self.call("Browser.close", timeout=5)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        os.close(self._send_fd)
        os.close(self._recv_fd)


def check(report: Path, screenshot: Path, executable: str, width: int) -> list[str]:
    """Load ``report``, write ``screenshot`` (the whole page) and return the problems found."""
    url = report.resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="check-report-") as profile:
        browser = Browser(executable, Path(profile))
        try:
            target = browser.call("Target.createTarget", url="about:blank")["targetId"]
            session = browser.call("Target.attachToTarget", targetId=target, flatten=True)
            sid = session["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                browser.call(f"{domain}.enable", sid)
            browser.call("Emulation.setDeviceMetricsOverride", sid, width=width, height=900,
                         deviceScaleFactor=1, mobile=False)  # fmt: skip
            browser.call("Page.navigate", sid, url=url)
            browser.wait_for("Page.loadEventFired")
            result = browser.call(
                "Runtime.evaluate", sid, expression=PAGE_CHECKS, returnByValue=True,
                awaitPromise=True,
            )["result"]["value"]  # fmt: skip
            height = int(result["height"])
            shot = browser.call(
                "Page.captureScreenshot", sid, format="png", captureBeyondViewport=True,
                clip={"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
            )  # fmt: skip
            screenshot.write_bytes(base64.b64decode(shot["data"]))
        finally:
            browser.close()
    problems = list(result["problems"]) + _event_problems(browser.events, url)
    print(f"sections: {', '.join(result['sections'])}; page {width} x {height} px")
    return problems


def _event_problems(events: list[dict[str, Any]], url: str) -> list[str]:
    found = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
            found.append(f"console {params['type']}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            found.append(f"uncaught exception: {details.get('text')} {details.get('exception')}")
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            found.append(f"browser log error: {params['entry'].get('text')}")
        elif method == "Network.requestWillBeSent":
            requested = params["request"]["url"]
            if not requested.startswith("data:") and requested != url:
                found.append(f"network request: {requested[:100]}")
        elif method == "Network.loadingFailed":
            found.append(f"failed to load: {params.get('errorText')}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="report.html, or the run folder holding it")
    parser.add_argument("--screenshot", type=Path, default=None,
                        help="where the PNG goes (default: beside the report, .png)")  # fmt: skip
    parser.add_argument("--width", type=int, default=1400, help="window width in CSS pixels")
    args = parser.parse_args(argv)
    report = args.report / "report.html" if args.report.is_dir() else args.report
    if not report.is_file():
        print(f"check_report: no report at {report}", file=sys.stderr)
        return 2
    executable = os.environ.get("CHROMIUM") or next(filter(None, map(shutil.which, BROWSERS)), None)
    if executable is None:
        print("check_report: no Chromium found (apt-get install chromium, or set CHROMIUM)",
              file=sys.stderr)  # fmt: skip
        return 2
    screenshot = args.screenshot or report.with_suffix(".png")
    problems = check(report, screenshot, executable, args.width)
    print(f"screenshot: {screenshot}")
    for problem in problems:
        print(f"problem: {problem}")
    print("ok: no problems" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
