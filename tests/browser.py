"""Load a page in headless Chromium and read what it reports: a helper for tests.

    page_result(url, timeout=60) -> "PASS 9 messages checked"

Why DevTools and not ``chromium --dump-dom``: --dump-dom dumps at the load
event, and --virtual-time-budget does not wait for network traffic: it
fast-forwards the page's timers while WebSocket frames are still on the
wire, so a page that measures round trips reads as timed out within a
second of real time. Here the browser runs with --remote-debugging-pipe
(the DevTools protocol as NUL-terminated JSON on its fds 3 and 4, no port,
no extra dependency), opens the page in a new tab, and polls the
`#result` element's data-state in real time until it leaves "running".

Every wait is bounded by `timeout`; the browser and its profile directory
are always removed, also when the page never finishes.
"""
from __future__ import annotations

import fcntl
import json
import os
import selectors
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")
# Flags for a browser without a display, GPU or setuid sandbox (containers,
# CI runners as root), that leaves no state behind.
HEADLESS_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-background-networking",
    "--disable-dev-shm-usage",
    "--remote-debugging-pipe",
)
POLL_INTERVAL = 0.1
# What the page's result element says, read in one evaluation.
RESULT_EXPRESSION = """(() => {
  const out = document.getElementById("result");
  return out ? [out.dataset.state || "", out.textContent] : null;
})()"""


class BrowserError(RuntimeError):
    """The browser could not be run, or the page did not finish in time."""


def chromium_binary() -> str | None:
    """Path of a Chromium (or Chrome) on PATH, or None."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def chromium_missing() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if chromium_binary() is None:
        return "chromium is not installed (apt-get install chromium)"
    return None


class _DevTools:
    """The DevTools protocol over a pipe pair: send a command, wait for its answer."""

    def __init__(self, to_browser: int, from_browser: int) -> None:
        self.to_browser, self.from_browser = to_browser, from_browser
        self.buffer = b""
        self.next_id = 0
        self.selector = selectors.DefaultSelector()
        self.selector.register(from_browser, selectors.EVENT_READ)

    def close(self) -> None:
        self.selector.close()
        os.close(self.to_browser)
        os.close(self.from_browser)

    def call(self, method: str, deadline: float, session: str | None = None, **params) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        data = json.dumps(message).encode() + b"\0"
        while data:  # a few hundred bytes: the pipe takes them at once
            data = data[os.write(self.to_browser, data):]
        while True:
            answer = self._next_message(deadline)
            if answer.get("id") == self.next_id:
                if "error" in answer:
                    raise BrowserError(f"{method}: {answer['error'].get('message', answer['error'])}")
                return answer.get("result", {})
            # anything else is an event nobody asked for: skip it

    def _next_message(self, deadline: float) -> dict:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not self.selector.select(left):
                raise BrowserError("the browser did not answer in time")
            chunk = os.read(self.from_browser, 65536)
            if not chunk:
                raise BrowserError("the browser closed its DevTools pipe (did it crash?)")
            self.buffer += chunk
        message, _, self.buffer = self.buffer.partition(b"\0")
        return json.loads(message)


def page_result(url: str, timeout: float = 60.0, *, ignore_certificate_errors: bool = False) -> str:
    """Open `url` in headless Chromium and return the text of its
    `<output id="result">` once its data-state is no longer "running" (the
    page's own verdict, e.g. "PASS 9 messages checked" or "FAIL ...").

    ignore_certificate_errors: accept the test certificate of a wss:// or
    https:// test server. Raises BrowserError when Chromium is missing or
    fails, or the page has not finished within `timeout` seconds (the
    message then carries what the page said last)."""
    state, text = evaluate_until(url, RESULT_EXPRESSION, lambda value: value is not None and value[0] != "running",
                                 timeout, ignore_certificate_errors=ignore_certificate_errors)
    return text.strip()


def evaluate_until(url: str, expression: str, done: Callable[[Any], bool], timeout: float = 60.0, *,
                   ignore_certificate_errors: bool = False) -> Any:
    """Open `url` in headless Chromium and evaluate the JavaScript
    `expression` in it every POLL_INTERVAL s until done(value) holds for
    its (JSON) value; return that value. Raises BrowserError as
    page_result() does, naming the last value when time runs out."""
    binary = chromium_binary()
    if binary is None:
        raise BrowserError(chromium_missing())
    deadline = time.monotonic() + timeout
    flags = list(HEADLESS_FLAGS)
    if ignore_certificate_errors:
        flags.append("--ignore-certificate-errors")
    with tempfile.TemporaryDirectory(prefix="fastecho-chromium-") as profile:
        browser = _Browser(binary, [*flags, f"--user-data-dir={profile}", "about:blank"],
                           os.path.join(profile, "stderr.txt"))
        devtools = _DevTools(browser.command_write, browser.answer_read)
        last: Any = None
        try:
            target = devtools.call("Target.createTarget", deadline, url=url)["targetId"]
            session = devtools.call("Target.attachToTarget", deadline, targetId=target, flatten=True)["sessionId"]
            while time.monotonic() < deadline:
                answer = devtools.call("Runtime.evaluate", deadline, session, expression=expression,
                                       returnByValue=True)
                if "exceptionDetails" in answer:  # e.g. the page is not there yet: try again
                    last = "exception: " + answer["result"].get("description", "").partition("\n")[0]
                else:
                    last = answer["result"].get("value")
                    if done(last):
                        return last
                time.sleep(POLL_INTERVAL)
            raise BrowserError(f"{url} did not finish within {timeout:g} s (last value: {last!r})")
        except BrowserError as e:
            status = browser.poll()
            if status is not None:
                raise BrowserError(f"{e}; chromium exited with status {status}: {browser.stderr_tail()}") from None
            raise
        finally:
            try:
                devtools.call("Browser.close", time.monotonic() + 5)
            except (BrowserError, OSError, ValueError):
                pass
            devtools.close()
            browser.stop(10)


class _Browser:
    """Chromium started with its DevTools pipe on fds 3 (commands in) and 4
    (answers out). posix_spawn moves the pipe ends there in the child: no
    preexec_fn (tests run threads) and no shell (dash cannot name fds
    above 9). Its stderr goes to a file: Chromium is chatty there (D-Bus,
    GPU), and a full pipe nobody reads would stall it."""

    def __init__(self, binary: str, args: list[str], stderr_path: str) -> None:
        self.stderr_path = stderr_path
        self.status: int | None = None
        pipes = [os.pipe(), os.pipe()]
        # Above fd 4 first, so that placing one end on 3 or 4 cannot clobber the other.
        (command_read, self.command_write), (self.answer_read, answer_write) = [
            tuple(_above_four(fd) for fd in pair) for pair in pipes]
        stderr_fd = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            # Its own session, so that its helpers (zygote, renderers) can be killed with it.
            self.pid = os.posix_spawn(binary, [binary, *args], dict(os.environ), setsid=True, file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_DUP2, stderr_fd, 2),
                (os.POSIX_SPAWN_DUP2, command_read, 3),
                (os.POSIX_SPAWN_DUP2, answer_write, 4),
            ])
        except OSError as e:
            os.close(self.command_write)
            os.close(self.answer_read)
            raise BrowserError(f"cannot start {binary}: {e.strerror or e}") from None
        finally:
            for fd in (command_read, answer_write, stderr_fd):
                os.close(fd)

    def poll(self) -> int | None:
        """Its exit status once it has exited (reaped), else None."""
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
        return self.status

    def stop(self, timeout: float) -> None:
        """Wait up to `timeout` for it to exit (after Browser.close), then kill it; always reaps."""
        deadline = time.monotonic() + timeout
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            self.status = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        try:  # helpers still winding down must not outlive the profile directory
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def stderr_tail(self, lines: int = 3) -> str:
        with open(self.stderr_path, "rb") as f:
            text = f.read().decode(errors="replace")
        return " | ".join(text.strip().splitlines()[-lines:])


def _above_four(fd: int) -> int:
    """fd moved to a number above 4 (close-on-exec, as os.pipe made it)."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 5)
    os.close(fd)
    return moved
