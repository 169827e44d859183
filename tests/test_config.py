"""Configuration: --config (TOML), FASTECHO_* variables and the command line.

Precedence is command line > environment > file > defaults; `serve
--print-config` shows the result; every bad value is one line naming the key
and its source, with exit 2.
"""
from __future__ import annotations

import ipaddress
import pwd
import sys
from decimal import ROUND_CEILING, Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastecho import config as cfg
from fastecho.listeners import SCHEMES, Listener
from helpers import assert_one_line_error, closed_by_server, recv_exactly, run_cli

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

# Variables that would change what these tests see, removed from the children.
CLEAN = {"FASTECHO_THREADS": None, "FASTECHO_CONFIG": None, "FASTECHO_PORT": None,
         "FASTECHO_GRACE": None, "FASTECHO_ALLOW": None}


def printed(*args: str, env: dict | None = None) -> bytes:
    """`serve --print-config ARGS`'s output (which must succeed, silently)."""
    result = run_cli("serve", "--print-config", *args, env={**CLEAN, **(env or {})})
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr == b""
    return result.stdout


def effective(*args: str, env: dict | None = None) -> dict:
    return tomllib.loads(printed(*args, env=env).decode())


def assert_print_config_reads_back(tmp_path, *args: str, env: dict | None = None) -> bytes:
    """--print-config's output, fed to --config, prints the very same bytes."""
    first = printed(*args, env=env)
    path = tmp_path / "printed.toml"
    path.write_bytes(first)
    assert printed("--config", str(path), env=env) == first
    return first


def assert_reads_back(config: cfg.ServeConfig, directory) -> None:
    """In process: to_toml(config) read back by read_config_file is the same config, same text."""
    text = cfg.to_toml(config)
    path = directory / "printed.toml"
    path.write_bytes(text.encode("utf-8"))  # as `serve --print-config` writes it
    again = cfg.resolve({}, {}, str(path))
    assert cfg.to_toml(again) == text
    assert again == config


@pytest.fixture
def config_file(tmp_path):
    def write(text: str, name: str = "fastecho.toml"):
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


def test_print_config_shows_every_option_with_long_option_names(tmp_path):
    config = effective()
    for key in ("host", "port", "threads", "backlog", "grace", "max_pending_output", "log_level",
                "log_time", "access_log", "access_log_ring", "daemon", "workdir", "metrics_host",
                "max_line", "max_connections", "max_connections_per_ip", "idle_timeout", "allow"):
        assert key in config, key
    assert config["port"] == 7000
    assert config["host"] == "127.0.0.1"
    assert config["threads"] >= 1


def test_print_config_writes_threads_in_toml_style():
    result = run_cli("serve", "--print-config", "--threads", "7", env=CLEAN)
    assert "\nthreads = 7\n" in result.stdout.decode()


def test_precedence_is_command_line_then_environment_then_file_then_default(config_file):
    path = str(config_file("threads = 3\nbacklog = 77\n"))
    env = {"FASTECHO_THREADS": "5"}
    assert effective("--config", path, "--threads", "7", env=env)["threads"] == 7
    assert effective("--config", path, env=env)["threads"] == 5
    assert effective("--config", path)["threads"] == 3
    assert effective("--config", path)["backlog"] == 77
    assert effective()["backlog"] == 1024


def test_config_file_can_be_named_by_fastecho_config(config_file):
    path = str(config_file("grace = 2.5\n"))
    assert effective(env={"FASTECHO_CONFIG": path})["grace"] == 2.5


def test_command_line_can_turn_off_a_flag_the_file_turns_on(config_file):
    path = str(config_file("access_log = true\n"))
    assert effective("--config", path)["access_log"] is True
    assert effective("--config", path, "--no-access-log")["access_log"] is False


def test_printed_config_reads_back_to_the_same_config(tmp_path):
    out = assert_print_config_reads_back(
        tmp_path, "--threads", "3", "--suffix", ' server["echo"]', "--allow", "10.0.0.0/8",
        "--allow", "::1/128", "--log-dir", str(tmp_path), "--metrics-port", "9999", "--access-log")
    config = tomllib.loads(out.decode())
    assert config["suffix"] == ' server["echo"]'
    assert config["allow"] == ["10.0.0.0/8", "::1/128"]


def test_environment_lists_and_booleans():
    config = effective(env={"FASTECHO_ALLOW": "10.0.0.0/8, 192.168.0.0/16",
                            "FASTECHO_ACCESS_LOG": "yes", "FASTECHO_DAEMON": "0"})
    assert config["allow"] == ["10.0.0.0/8", "192.168.0.0/16"]
    assert config["access_log"] is True
    assert config["daemon"] is False


def test_empty_variable_counts_as_unset_and_unknown_fastecho_variables_are_ignored():
    # FASTECHO_WHEELS_OUT belongs to ci/wheels.sh, not to the server.
    config = effective(env={"FASTECHO_THREADS": "", "FASTECHO_WHEELS_OUT": "/tmp/x"})
    assert config["threads"] >= 1


def test_relative_paths_are_made_absolute(tmp_path):
    result = run_cli("serve", "--print-config", "--pidfile", "run/fastecho.pid", env=CLEAN, cwd=tmp_path)
    assert tomllib.loads(result.stdout.decode())["pidfile"] == str(tmp_path / "run" / "fastecho.pid")


def test_log_level_accepts_the_original_names_and_python_aliases():
    assert effective("--log-level", "FATAL")["log_level"] == "fatal"
    assert effective("--log-level", "info")["log_level"] == "normal"
    assert effective("--log-level", "critical")["log_level"] == "fatal"


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"FASTECHO_THREADS": "0"},
         "fastecho: error: threads = 0 (from FASTECHO_THREADS): must be between 1 and 4096"),
        ({"FASTECHO_THREADS": "four"},
         "fastecho: error: threads = four (from FASTECHO_THREADS): must be an integer"),
        ({"FASTECHO_GRACE": "-1"},
         "fastecho: error: grace = -1 (from FASTECHO_GRACE): must be between 0 and 86400"),
        ({"FASTECHO_ACCESS_LOG": "maybe"},
         "fastecho: error: access_log = maybe (from FASTECHO_ACCESS_LOG): must be true or false"),
        ({"FASTECHO_ALLOW": "10.0.0.1/8"}, "allow = 10.0.0.1/8 (from FASTECHO_ALLOW)"),
        ({"FASTECHO_LOG_LEVEL": "loud"},
         "fastecho: error: log_level = loud (from FASTECHO_LOG_LEVEL): must be one of debug, normal"),
    ],
)
def test_bad_environment_value_names_the_variable(env, expected):
    line = assert_one_line_error(run_cli("serve", "--print-config", env={**CLEAN, **env}))
    assert line.startswith(expected) or expected in line, line


@pytest.mark.parametrize(
    "text, expected",
    [
        ("threads = 0\n", "threads = 0 (from {path}): must be between 1 and 4096"),
        ('threads = "4"\n', 'threads = "4" (from {path}): must be an integer'),
        ("threads = 2.5\n", "threads = 2.5 (from {path}): must be an integer"),
        ("port = 70000\n", "port = 70000 (from {path}): must be between 0 and 65535"),
        ('access_log = "yes"\n', 'access_log = "yes" (from {path}): must be true or false'),
        ("host = 1\n", "host = 1 (from {path}): must be a string"),
        ("allow = [1]\n", "allow = [1] (from {path}): must be a list of CIDR strings"),
        ('suffix = "a\\nb"\n', "(from {path}): must not contain a newline"),
        ("treads = 4\n", "unknown key 'treads' (from {path}) (did you mean threads?)"),
        ("[serve]\nthreads = 4\n", "unknown key 'serve' (from {path})"),
    ],
)
def test_bad_config_file_value_names_the_key_and_the_file(config_file, text, expected):
    path = config_file(text)
    line = assert_one_line_error(run_cli("serve", "--config", str(path), env=CLEAN))
    assert expected.format(path=path) in line, line


def test_bad_command_line_value_names_the_option():
    line = assert_one_line_error(run_cli("serve", "--threads", "0", env=CLEAN))
    assert line == "fastecho: error: threads = 0 (from --threads): must be between 1 and 4096"


def test_missing_config_file_is_one_line_exit_2(tmp_path):
    path = tmp_path / "absent.toml"
    line = assert_one_line_error(run_cli("serve", "--config", str(path), env=CLEAN))
    assert str(path) in line and "no such file" in line


def test_missing_file_named_by_fastecho_config_says_so(tmp_path):
    path = tmp_path / "absent.toml"
    line = assert_one_line_error(run_cli("serve", env={**CLEAN, "FASTECHO_CONFIG": str(path)}))
    assert str(path) in line and "FASTECHO_CONFIG" in line


def test_invalid_toml_is_one_line_exit_2_with_the_position(config_file):
    path = config_file("threads = \n[[[\n")
    line = assert_one_line_error(run_cli("serve", "--config", str(path), env=CLEAN))
    assert str(path) in line and "invalid TOML" in line and "line 1" in line


def test_config_file_settings_reach_the_running_server(serve, config_file):
    path = config_file('threads = 3\nsuffix = "!"\n')
    server = serve("--config", str(path), env=CLEAN)
    with server.connect() as sock:
        sock.sendall(b"hi\n")
        assert recv_exactly(sock, 4) == b"hi!\n"
    assert server.stop() == 0
    # The listening line reports the file's thread count.
    assert "3 threads" in server.stderr()


# ---------------------------------------------------------------- --print-config round trip

def _limit(opt: cfg.Option, which: str) -> str:
    value = opt.low if which == "low" else opt.high
    return str(int(value)) if opt.kind == "int" else repr(value)


@pytest.mark.parametrize("which", ["low", "high"])
def test_every_number_at_its_limit_reads_back_byte_for_byte(tmp_path, which):
    args = [arg for opt in cfg.OPTIONS if opt.kind in ("int", "float")
            for arg in (opt.flag, _limit(opt, which))]
    config = tomllib.loads(assert_print_config_reads_back(tmp_path, *args).decode())
    for opt in cfg.OPTIONS:
        if opt.kind in ("int", "float"):
            assert config[opt.name] == (opt.low if which == "low" else opt.high), opt.name


def test_non_ascii_and_control_characters_read_back_byte_for_byte(tmp_path):
    # DEL and the other controls must be written as TOML escapes (raw, TOML refuses
    # them); é, ö and an emoji as they are; NBSP escaped so it can be seen.
    out = assert_print_config_reads_back(
        tmp_path, "--suffix", " é\t\x7f\x1b[0m\u00a0😀\"", "--log-dir", str(tmp_path / "jörg"),
        "--host", "::1", "--metrics-host", "localhost")
    assert 'suffix = " é\\t\\u007f\\u001b[0m\\u00a0😀\\""' in out.decode()
    assert tomllib.loads(out.decode())["log_dir"] == str(tmp_path / "jörg")


def test_print_config_writes_utf_8_whatever_the_locale(tmp_path):
    # With a Latin-1 stdout, text output would write é as one byte (a file --config
    # calls "not UTF-8") and fail outright on a character Latin-1 lacks.
    out = assert_print_config_reads_back(tmp_path, "--suffix", "é€",
                                         env={"PYTHONIOENCODING": "latin-1"})
    assert 'suffix = "é€"'.encode() in out


# Command-line text for each kind of option, as a user could type it.
_NAME = st.characters(blacklist_categories=("Cs", "Cc"))  # what a name or a path may hold
_SUFFIX = st.characters(blacklist_categories=("Cs",), blacklist_characters="\n")
_USERS = sorted({p.pw_name for p in pwd.getpwall()} | {str(p.pw_uid) for p in pwd.getpwall()})


def _network(draw_addr) -> str:
    address, prefix = draw_addr
    return str(ipaddress.ip_network(f"{address}/{prefix % (address.max_prefixlen + 1)}", strict=False))


def _is_host(text: str) -> bool:
    try:
        text.encode("idna")
    except UnicodeError:
        return False
    return True


def command_line_text(opt: cfg.Option) -> st.SearchStrategy:
    """What read_command_line takes for opt: text, a bool, or a tuple of CIDR texts."""
    if opt.kind == "int":
        return st.integers(int(opt.low), int(opt.high)).map(str)
    if opt.kind == "float":
        # Floats in range (subnormals included) and decimals finer than the engine's step.
        return st.one_of(st.floats(opt.low, opt.high).map(repr),
                         st.decimals(Decimal(repr(opt.low)), Decimal(repr(opt.high)), places=7).map(str),
                         st.sampled_from(["1e-400", "0.0004", f"{opt.high:g}"]
                                         + (["0", "-0"] if opt.low == 0 else [])))
    if opt.kind == "bool":
        return st.booleans()
    if opt.kind == "choice":
        aliases = tuple(alias for alias, name in cfg._LEVEL_ALIASES.items() if name in opt.choices)
        return st.sampled_from(opt.choices + aliases).map(str.upper)
    if opt.kind == "networks":
        return st.lists(st.tuples(st.ip_addresses(), st.integers(0, 128)).map(_network),
                        max_size=3).map(tuple)
    if opt.kind == "listeners":
        urls = st.builds(lambda scheme, host, port: Listener(scheme, str(host), port).url,
                         st.sampled_from(tuple(SCHEMES)), st.ip_addresses(), st.integers(1, 65535))
        return st.lists(urls, max_size=3, unique_by=lambda url: url.split("://")[1]).map(tuple)
    if opt.kind == "origins":
        origins = st.builds(lambda scheme, host, port: f"{scheme}://{host}" + (f":{port}" if port else ""),
                            st.sampled_from(["https", "http", "chrome-extension"]),
                            st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z]{2,6})?", fullmatch=True),
                            st.integers(0, 65535))
        return st.lists(st.one_of(origins, st.just("null")), max_size=3).map(tuple)
    if opt.name == "ws_path":
        allowed = "".join(ch for ch in map(chr, range(0x21, 0x7F)) if ch not in cfg.WS_PATH_FORBIDDEN)
        return st.text(st.sampled_from(allowed), max_size=40).map(lambda tail: "/" + tail)
    if opt.kind == "path":
        return st.text(_NAME, min_size=1, max_size=40)
    if opt.name == "user":
        return st.sampled_from(_USERS)
    if opt.controls_ok:
        return st.text(_SUFFIX, max_size=40)
    if opt.kind == "str":
        return st.text(_NAME, min_size=1, max_size=40).filter(_is_host)
    raise AssertionError(f"no strategy for {opt.name} ({opt.kind}): add one")


def _combinable(given: dict) -> bool:
    """Settings that may go together (the ones that may not are tested apart): --listen
    stands apart from --host/--port and --fd, and line mode needs a budget of 4 lines."""
    if given.get("listen") and {"host", "port", "fd"} & set(given):
        return False
    speaks_ws = (any(url.split("+")[0].split("://")[0] in ("ws", "wss") for url in given.get("listen", ()))
                 or str(given.get("fd_scheme", "")).lower().split("+")[0] in ("ws", "wss"))
    if "suffix" in given and speaks_ws:
        return False  # line mode does not apply to WebSocket
    if speaks_ws:
        budget = int(given.get("max_memory") or cfg.default_max_memory())
        message = int(given.get("max_message") or cfg.OPTION_BY_NAME["max_message"].default)
        if budget // 4 < message:
            return False
    if "suffix" in given:
        budget = int(given.get("max_memory") or cfg.default_max_memory())
        line = int(given.get("max_line") or cfg.OPTION_BY_NAME["max_line"].default)
        return budget // 4 >= line
    return True


def _with_certificate(given: dict) -> dict:
    """A TLS listener, --fd-scheme tls, --tls-key or --tls-client-ca each need --tls-cert."""
    wants_tls = (any(url.startswith(("tls", "wss")) for url in given.get("listen", ()))
                 or str(given.get("fd_scheme", "")).lower().startswith(("tls", "wss"))
                 or "tls_key" in given or "tls_client_ca" in given)
    if wants_tls and "tls_cert" not in given:
        return {**given, "tls_cert": "server.pem"}
    return given


COMMAND_LINES = st.fixed_dictionaries(
    {}, optional={o.name: command_line_text(o) for o in cfg.OPTIONS}).map(_with_certificate).filter(_combinable)


@settings(max_examples=150, deadline=None)
@given(given_values=COMMAND_LINES)
def test_any_valid_settings_read_back_unchanged(tmp_path_factory, given_values):
    config = cfg.resolve(given_values, {})
    assert_reads_back(config, tmp_path_factory.mktemp("roundtrip"))


# ---------------------------------------------------------------- rounding to the engine's step

@settings(max_examples=200, deadline=None)
@given(text=command_line_text(cfg.OPTION_BY_NAME["idle_timeout"]))
def test_seconds_round_up_to_the_millisecond_and_never_to_zero(text):
    # The engine takes whole milliseconds (int(seconds * 1000)); a positive value
    # that became 0 would turn the idle timeout off, or make --grace "stop at once".
    for name in ("idle_timeout", "grace"):
        value = getattr(cfg.resolve({name: text}, {}), name)
        written = Decimal(text)
        milliseconds = written.scaleb(3).to_integral_value(rounding=ROUND_CEILING)  # exact
        assert Decimal(repr(value)).scaleb(3) == milliseconds
        assert (int(value * 1000) > 0) == (written > 0)


@pytest.mark.parametrize("option", ["--idle-timeout", "--grace"])
@pytest.mark.parametrize("text, shown", [("0.0004", 0.001), ("1e-400", 0.001), ("0.07", 0.07),
                                         ("2.0001", 2.001), ("0", 0.0)])
def test_print_config_shows_seconds_rounded_up_to_the_millisecond(option, text, shown):
    assert effective(option, text)[option[2:].replace("-", "_")] == shown


def test_sub_millisecond_idle_timeout_still_closes_idle_connections(serve):
    # Issue 9: 0.0004 s became 0 ms in the engine, which means "never".
    server = serve("--idle-timeout", "0.0004", env=CLEAN)
    with server.connect() as sock:
        assert closed_by_server(sock, timeout=10)
