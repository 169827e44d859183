"""Ctrl-C during start-up: exit 130 quietly until the server serves, a graceful stop (0) after.

Two ways in. A sitecustomize hook sends SIGINT at a chosen import, which makes
each stage of fastecho's own start-up exact. Signals at fixed delays after
Popen then cover whatever the stages miss, including the interpreter's own
start-up, where fastecho has no code running yet.
"""
from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

import fastecho
from helpers import LISTENING, fastecho_command, reap, run_cli

# Sends this process SIGINT when the module named in FASTECHO_TEST_SIGINT_AT_IMPORT is
# first looked for; with FASTECHO_TEST_SIGINT_IN_CALLBACK=1, from inside a weakref
# callback, where Python drops any exception a signal handler raises (what happens when
# a Ctrl-C lands in importlib's module-lock callback).
SITECUSTOMIZE = '''
import os, signal, sys, weakref

_target = os.environ.get("FASTECHO_TEST_SIGINT_AT_IMPORT")
_in_callback = os.environ.get("FASTECHO_TEST_SIGINT_IN_CALLBACK") == "1"


def _interrupt(_ref=None):
    os.kill(os.getpid(), signal.SIGINT)
    for _ in range(100):  # bytecode to run the Python-level handler on, here
        pass


class _Hook:
    def find_spec(self, name, path=None, target=None):
        if name == _target:
            sys.meta_path.remove(self)
            if _in_callback:
                gone = type("Gone", (), {})()
                ref = weakref.ref(gone, _interrupt)
                del gone  # the callback runs now, while ref lives
            else:
                _interrupt()
        return None


if _target:
    sys.meta_path.insert(0, _Hook())
'''

# The interpreter's own failures when SIGINT lands before fastecho's first line runs.
CPYTHON_START_UP = re.compile(r"^(Fatal Python error: init_\w+|Could not import runpy module)")
# ... and when it drops the KeyboardInterrupt (printing this) and runs on, into serving.
CPYTHON_DROPPED = re.compile(r"^(Exception ignored in: <function _get_module_lock|"
                             r"Failed checking if argv\[0\] is an import path entry)")
FASTECHO_FRAME = re.compile(r'File "[^"]*/fastecho/([\w/]+\.py)", line (\d+)')
# Up to this line of fastecho/__init__.py SIGINT still has Python's default handler.
GUARD_LINE = next(n for n, line in enumerate(Path(fastecho.__file__).read_text().splitlines(), 1)
                  if "_signal.signal(_signal.SIGINT, _interrupted_while_loading)" in line)
DELAYS_MS = (0, 5, 10, 20, 40, 80)


@pytest.fixture
def hook_env(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)

    def env(module: str, in_callback: bool = False) -> dict[str, str]:
        return {"PYTHONPATH": str(tmp_path), "FASTECHO_TEST_SIGINT_AT_IMPORT": module,
                "FASTECHO_TEST_SIGINT_IN_CALLBACK": "1" if in_callback else "0"}
    return env


@pytest.mark.parametrize("in_callback", [False, True], ids=["plain", "in-weakref-callback"])
@pytest.mark.parametrize("module, stage", [
    ("fastecho.config", "loading the command"),
    ("fastecho.server", "starting the server, before its signal handlers"),
])
def test_sigint_before_the_server_handles_signals_exits_130_quietly(hook_env, module, stage,
                                                                    in_callback):
    result = run_cli("serve", "--port", "0", "--threads", "1", timeout=20,
                     env=hook_env(module, in_callback))
    assert (result.returncode, result.stdout, result.stderr) == (130, b"", b""), (stage, result)


def test_sigint_after_the_server_handles_signals_is_a_graceful_stop(hook_env):
    # fastecho.metrics is imported after the handlers are installed, before listening.
    result = run_cli("serve", "--port", "0", "--threads", "1", "--metrics-port", "0",
                     timeout=20, env=hook_env("fastecho.metrics"))
    assert result.returncode == 0, result
    assert LISTENING.search(result.stdout)
    err = result.stderr.decode()
    assert "Traceback" not in err and "] stopped" in err


def before_the_guard(rc: int, err: str) -> bool:
    """The interpreter's own outcome of a SIGINT handled before fastecho's guard was in place.

    A signal that arrives while Python runs C code (reading a module, say) is
    handled at its next Python instruction, which may be the first of
    fastecho/__init__.py: so frames of that file up to GUARD_LINE count as before.
    """
    frames = [(name, int(line)) for name, line in FASTECHO_FRAME.findall(err)]
    if any(name != "__init__.py" or line > GUARD_LINE for name, line in frames):
        return False
    if rc == 1 and CPYTHON_START_UP.match(err):
        return True
    return rc == -signal.SIGINT and err.rstrip().endswith("KeyboardInterrupt")


def test_sigint_at_any_delay_after_start_is_130_or_a_graceful_stop(tmp_path):
    outcomes = []
    for delay_ms in DELAYS_MS:
        err_path = tmp_path / f"{delay_ms}.err"
        with open(err_path, "wb") as err_file:
            proc = subprocess.Popen(fastecho_command("serve", "--port", "0", "--threads", "1"),
                                    stdout=subprocess.PIPE, stderr=err_file,
                                    stdin=subprocess.DEVNULL)
        try:
            time.sleep(delay_ms / 1000)
            proc.send_signal(signal.SIGINT)
            try:
                out, _ = proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                # Still serving: CPython dropped the KeyboardInterrupt (in importlib's
                # weakref callback, say) before any fastecho code ran, and said so.
                err = err_path.read_text()
                assert CPYTHON_DROPPED.match(err) and not FASTECHO_FRAME.search(err), (delay_ms, err)
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(20) == 0
                outcomes.append((delay_ms, "dropped by the interpreter"))
                continue
        finally:
            reap(proc)
        rc, err = proc.returncode, err_path.read_text()
        if rc == 0:  # it got to serving: the signal was a graceful stop
            assert LISTENING.search(out) and "] stopped" in err and "Traceback" not in err, (delay_ms, err)
            outcomes.append((delay_ms, "stopped"))
        elif rc == 130:  # interrupted while starting: nothing served, nothing said
            assert out == b"" and err.strip() == "", (delay_ms, out, err)
            outcomes.append((delay_ms, "interrupted"))
        elif rc == -signal.SIGINT and out == b"" and err == "":
            # Killed before Python installed its handler: a shell reports 130 too.
            outcomes.append((delay_ms, "killed by SIGINT"))
        else:
            assert out == b"" and before_the_guard(rc, err), (delay_ms, rc, out, err)
            outcomes.append((delay_ms, "before the guard"))
    print(outcomes)
