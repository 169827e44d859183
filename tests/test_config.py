"""Configuration: --config (TOML), FASTECHO_* variables and the command line.

Precedence is command line > environment > file > defaults; `serve
--print-config` shows the result; every bad value is one line naming the key
and its source, with exit 2.
"""
from __future__ import annotations

import sys

import pytest

from helpers import assert_one_line_error, recv_exactly, run_cli

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

# Variables that would change what these tests see, removed from the children.
CLEAN = {"FASTECHO_THREADS": None, "FASTECHO_CONFIG": None, "FASTECHO_PORT": None,
         "FASTECHO_GRACE": None, "FASTECHO_ALLOW": None}


def effective(*args: str, env: dict | None = None) -> dict:
    result = run_cli("serve", "--print-config", *args, env={**CLEAN, **(env or {})})
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr == b""
    return tomllib.loads(result.stdout.decode())


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


def test_printed_config_reads_back_to_the_same_config(config_file, tmp_path):
    first = run_cli("serve", "--print-config", "--threads", "3", "--suffix", ' server["echo"]',
                    "--allow", "10.0.0.0/8", "--allow", "::1/128", "--log-dir", str(tmp_path),
                    "--metrics-port", "9999", "--access-log", env=CLEAN)
    assert first.returncode == 0, first.stderr
    path = str(config_file(first.stdout.decode(), "printed.toml"))
    second = run_cli("serve", "--print-config", "--config", path, env=CLEAN)
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout
    config = tomllib.loads(second.stdout.decode())
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
