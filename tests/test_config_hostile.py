"""Hostile configuration input (issue 9): one line, exit 2, never a traceback, a hang or a quiet change.

Whatever the source (command line, FASTECHO_* variable, --config file or
FASTECHO_CONFIG), a value or file the server cannot use stops it with one
`fastecho: error: ...` line on stderr and exit status 2.
"""
from __future__ import annotations

import os
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastecho import config as cfg
from fastecho.errors import ConfigError
from helpers import assert_one_line_error, recv_exactly, run_cli
from test_config import CLEAN, assert_print_config_reads_back, assert_reads_back

# A file that would block or never end must not hold the command up: well above
# the ~0.3 s a refusal takes, well below run_cli's own limit.
QUICK = 10.0


@pytest.fixture
def toml(tmp_path):
    """Factory: toml(text) writes a config file (bytes as they are) and returns its path."""
    def write(text: str | bytes, name: str = "fastecho.toml") -> str:
        path = tmp_path / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return str(path)

    return write


def serve_error(*args: str, env: dict | None = None, timeout: float = 20.0) -> str:
    """`serve ARGS` must fail at once with one error line (returned) and exit 2."""
    started = time.monotonic()
    result = run_cli("serve", *args, env={**CLEAN, **(env or {})}, timeout=timeout)
    assert time.monotonic() - started < QUICK
    return assert_one_line_error(result)


# ---------------------------------------------------------------- NUL and control characters

@pytest.mark.parametrize("name", ["host", "metrics_host", "user", "pidfile", "log_dir", "workdir"])
def test_nul_in_a_name_or_path_is_refused(toml, name):
    # Issue 9: user and the paths raised "ValueError: embedded null byte"; a NUL in
    # host was cut off by the C side and the server listened on 127.0.0.1.
    path = toml(f'{name} = "127.0.0.1\\u0000evil"\n')
    line = serve_error("--config", path, "--port", "0")
    assert line == (f'fastecho: error: {name} = "127.0.0.1\\u0000evil" (from {path}): '
                    "must not contain a control character (U+0000)")


@pytest.mark.parametrize("args, env, expected", [
    (["--host", "127.0.0.1\x1b[2J"], {}, 'host = "127.0.0.1\\u001b[2J" (from --host)'),
    (["--pidfile", "/tmp/a\nb"], {}, 'pidfile = "/tmp/a\\nb" (from --pidfile)'),
    ([], {"FASTECHO_LOG_DIR": "/tmp/\x7f"}, 'log_dir = "/tmp/\\u007f" (from FASTECHO_LOG_DIR)'),
    ([], {"FASTECHO_USER": "root\t"}, 'user = "root\\t" (from FASTECHO_USER)'),
])
def test_control_characters_from_the_command_line_and_environment_are_refused(args, env, expected):
    # The line shows the character escaped: the terminal never acts on it.
    line = serve_error("--print-config", *args, env=env)
    assert expected in line and "must not contain a control character" in line


def test_nul_in_the_suffix_is_sent_and_printed_as_an_escape(serve, toml, tmp_path):
    # The engine takes the suffix with its length, so NUL (or ESC) is just a byte
    # to send; --print-config writes it as a TOML escape that reads back the same.
    path = toml('suffix = "\\u0000!"\n')
    out = assert_print_config_reads_back(tmp_path, "--config", path)
    assert b'\nsuffix = "\\u0000!"\n' in out
    server = serve("--config", path, env=CLEAN)
    with server.connect() as sock:
        sock.sendall(b"hi\n")
        assert recv_exactly(sock, 5) == b"hi\x00!\n"


# ---------------------------------------------------------------- bytes that are not UTF-8

@pytest.mark.parametrize("args, env, expected", [
    # Issue 9: --print-config wrote the byte raw, and --config refused the result as "not UTF-8".
    (["--suffix", os.fsdecode(b"\xff")], {}, 'suffix = "\\xff" (from --suffix)'),
    (["--host", os.fsdecode(b"h\xc3")], {}, 'host = "h\\xc3" (from --host)'),
    ([], {"FASTECHO_PIDFILE": os.fsdecode(b"/run/\xe9.pid")},
     'pidfile = "/run/\\xe9.pid" (from FASTECHO_PIDFILE)'),
])
def test_text_that_is_not_utf_8_is_refused(args, env, expected):
    # A TOML file cannot hold such bytes, so --print-config could not write them back.
    line = serve_error("--print-config", *args, env=env)
    assert expected in line and "must be UTF-8 text (byte 0x" in line


def test_config_file_name_that_is_not_utf_8_is_still_a_file_name(tmp_path):
    # The name is never printed as TOML, and Linux allows any bytes in it.
    name = os.fsdecode(os.fsencode(str(tmp_path)) + b"/\xff.toml")
    with open(name, "w") as f:
        f.write("threads = 2\n")
    result = run_cli("serve", "--print-config", "--config", name, env=CLEAN)
    assert result.returncode == 0, result.stderr
    assert b"\nthreads = 2\n" in result.stdout


# ---------------------------------------------------------------- config files that are not files

def test_deeply_nested_toml_is_refused(toml):
    # Issue 9: a RecursionError traceback.
    path = toml("a=" + "[" * 100000 + "\n")
    line = serve_error("--config", path)
    assert line == f"fastecho: error: config file {path}: invalid TOML: nested too deeply"


def test_dev_zero_is_refused_without_reading_it():
    # Issue 9: grew to 1.3 GB in 3 s.
    line = serve_error("--config", "/dev/zero")
    assert line == ("fastecho: error: config file /dev/zero (from --config): "
                    "is a character device, not a regular file")


def test_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    # Issue 9: waited forever. serve_error's clock shows it returns at once.
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    line = serve_error("--config", str(fifo))
    assert line.endswith(f"{fifo} (from --config): is a FIFO, not a regular file")


def test_fastecho_config_is_held_to_the_same_rules(tmp_path):
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    line = serve_error(env={"FASTECHO_CONFIG": str(fifo)})
    assert line.endswith(f"{fifo} (from FASTECHO_CONFIG): is a FIFO, not a regular file")


def test_directory_is_refused(tmp_path):
    assert serve_error("--config", str(tmp_path)).endswith("is a directory, not a regular file")


def test_empty_config_file_name_is_refused():
    # Issue 9: named the current directory as the missing file.
    line = serve_error("--config", "")
    assert line == 'fastecho: error: config file "" (from --config): must be a non-empty file name'


def test_config_file_name_with_a_control_character_is_refused(tmp_path):
    line = serve_error("--config", f"{tmp_path}/a\nb.toml")
    assert f'"{tmp_path}/a\\nb.toml" (from --config): ' in line
    assert line.endswith("must not contain a control character (U+000A)")


def test_config_file_over_1_mib_is_refused_and_1_mib_is_read(toml):
    comment = b"#" * (cfg.MAX_CONFIG_FILE - len(b"\nthreads = 2\n")) + b"\nthreads = 2\n"
    assert len(comment) == cfg.MAX_CONFIG_FILE
    result = run_cli("serve", "--print-config", "--config", toml(comment), env=CLEAN)
    assert result.returncode == 0, result.stderr
    assert b"\nthreads = 2\n" in result.stdout
    path = toml(comment + b"\n", "big.toml")
    assert serve_error("--config", path).endswith(f"{path} (from --config): larger than 1 MiB")


def test_integer_too_long_to_convert_is_invalid_toml(toml):
    # int() refuses over 4300 digits with a ValueError that tomllib lets through.
    path = toml("threads = " + "9" * 5000 + "\n")
    line = serve_error("--config", path)
    assert line.startswith(f"fastecho: error: config file {path}: invalid TOML: Exceeds the limit")


# ---------------------------------------------------------------- numbers and names

@pytest.mark.parametrize("text, expected", [
    ("grace = inf\n", "grace = inf (from {path}): must be between 0 and 86400"),
    ("grace = -inf\n", "grace = -inf (from {path}): must be between 0 and 86400"),
    ("idle_timeout = nan\n", "idle_timeout = nan (from {path}): must be a number"),
    # Past the limit once rounded up to the millisecond the engine counts in.
    ("idle_timeout = 86400.0004\n",
     "idle_timeout = 86400.0004 (from {path}): must be between 0 and 86400"),
])
def test_toml_inf_and_nan_are_refused_by_validation(toml, text, expected):
    path = toml(text)
    assert serve_error("--config", path) == "fastecho: error: " + expected.format(path=path)


@pytest.mark.parametrize("args, expected", [
    (["--grace", "nan"], "grace = nan (from --grace): must be a number"),
    (["--idle-timeout", "inf"], "idle_timeout = inf (from --idle-timeout): must be between 0 and 86400"),
    (["--user", "²"], "user = ² (from --user): no such user"),  # isdigit(), but not to int()
    (["--user", "9" * 5000], "(from --user): no such user"),
    # getaddrinfo's idna codec raised UnicodeError at bind time for a label over 63 characters.
    (["--host", "a" * 64], "(from --host): must be a host name or address"),
    (["--metrics-host", "a..b"], "(from --metrics-host): must be a host name or address"),
])
def test_numbers_and_names_that_raised_are_refused(args, expected):
    assert expected in serve_error("--print-config", *args)


def test_relative_paths_without_a_current_directory_are_refused(tmp_path, monkeypatch):
    # os.path.abspath raised FileNotFoundError once the directory the command
    # ran in had been removed (in process: a subprocess cannot start there).
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    for args in ({"pidfile": "x.pid"}, {}):
        with pytest.raises(ConfigError, match="is relative, and the current directory no longer exists"):
            cfg.resolve(args, {}, None if args else "x.toml")
    assert cfg.resolve({"pidfile": "/run/x.pid"}, {}).pidfile == "/run/x.pid"


def test_a_long_bad_value_is_shown_cut_short(toml):
    path = toml(f'allow = ["{"x" * 100000}"]\n')
    line = serve_error("--config", path)
    assert len(line) < 1000 and "..." in line


# ---------------------------------------------------------------- any input at all

def _one_printable_line(error: ConfigError) -> None:
    message = str(error)
    assert message and message.isprintable(), repr(message)  # no newline, no escape sequence


# Text as argv or the environment can hold it: any character, surrogate-escaped
# bytes (non-UTF-8 input) and lone surrogates included; no NUL (exec refuses it).
_ANY_CHARACTER = st.one_of(st.characters(blacklist_characters="\x00"), st.characters(categories=["Cs"]),
                           st.sampled_from("\n\x1b\x7f\x85\u00a0\udcff."))
_ANY_TEXT = st.one_of(st.text(_ANY_CHARACTER, max_size=30),
                      st.from_regex(r"\A[ +\-0-9.eE_a-z:/%]{0,20}\Z"))  # near-numbers, near-addresses


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from([o.name for o in cfg.OPTIONS]), text=_ANY_TEXT,
       from_environment=st.booleans())
def test_any_text_for_any_option_is_one_line_or_reads_back(tmp_path_factory, name, text,
                                                           from_environment):
    opt = cfg.OPTION_BY_NAME[name]
    try:
        if from_environment or opt.kind == "bool":  # the command line gives a bool option no text
            config = cfg.resolve({}, {opt.env: text})
        else:
            config = cfg.resolve({name: (text,) if opt.kind == "networks" else text}, {})
    except ConfigError as e:
        _one_printable_line(e)
    else:
        assert_reads_back(config, tmp_path_factory.mktemp("accepted"))


# Values as tomllib returns them (read_config_file reads floats as Decimal).
_TOML_SCALARS = st.one_of(st.booleans(), st.integers(), st.decimals(), st.text(), st.datetimes(),
                          st.dates(), st.times())
_TOML_VALUES = st.recursive(_TOML_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=3)), max_leaves=10)


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from([o.name for o in cfg.OPTIONS]), raw=_TOML_VALUES)
def test_any_toml_value_for_any_key_is_one_line_or_reads_back(tmp_path_factory, name, raw):
    try:
        value = cfg.parse_value(name, raw, "/etc/fastecho.toml", text=False)
        config = cfg.ServeConfig(**{name: value})
    except ConfigError as e:
        _one_printable_line(e)
    else:
        assert_reads_back(config, tmp_path_factory.mktemp("accepted"))
