"""Every command-line error is one line on stderr, ``engine: error: …``, naming what is wrong
and what to do: exit 2 for a wrong command line or setting, 1 for a failure while running,
never a traceback (unless --debug). Each case runs the real command in a subprocess."""

import os
import socket
import sqlite3
import subprocess
import sys

import pytest

from engine.cli import COMMANDS, main
from engine.server import serve_subprocess

USAGE, FAILED = 2, 1


def _engine(*argv: str, env: dict[str, str] | None = None, timeout_s: float = 60):
    base = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
    return subprocess.run([sys.executable, "-m", "engine", *argv], capture_output=True,
                          text=True, timeout=timeout_s, env={**base, **(env or {})},
                          stdin=subprocess.DEVNULL)


def _assert_one_line_error(result, code: int, *needles: str) -> None:
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("engine: error: ") and "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def _toml(tmp_path, text: str) -> str:
    path = tmp_path / "engine.toml"
    path.write_text(text)
    return str(path)


USAGE_CASES = {
    "port_out_of_range": (["serve", "--port", "99999"], {}, ["--port", "99999", "1-65535"]),
    "port_not_a_number": (["serve", "--port", "http"], {}, ["--port", "integer"]),
    "host_empty": (["serve", "--host", ""], {}, ["--host", "is empty", "127.0.0.1"]),
    "root_path_relative": (["serve", "--root-path", "engine"], {},
                           ["--root-path", "'engine' must start with '/'", "/engine"]),
    "root_path_with_query": (["serve", "--root-path", "/e?x=1"], {}, ["--root-path", "query"]),
    "root_path_from_env": (["serve"], {"ENGINE_ROOT_PATH": "/a/../b"},
                           ["$ENGINE_ROOT_PATH", "'..'"]),
    "listen_without_port": (["relay", "--listen", "localhost"], {}, ["HOST:PORT"]),
    "listen_port_out_of_range": (["relay", "--listen", "127.0.0.1:70000"], {}, ["70000"]),
    "upstream_not_http": (["relay", "--upstream", "ftp://x"], {}, ["ftp://x", "http(s)"]),
    "upstream_bad_port": (["relay", "--upstream", "http://h:99999"], {}, ["99999"]),
    "setting_out_of_range": (["relay", "--linger-ms", "-1"], {}, ["linger_ms", ">= 0"]),
    "setting_not_a_number": (["relay", "--max-in-flight", "lots"], {}, ["max_in_flight"]),
    "url_setting_from_env": (["calls", "--project", "a/b"], {"ENGINE_URL": "nope"}, ["url"]),
    "env_typo": (["relay"], {"ENGINE_LINGR_MS": "5"},
                 ["ENGINE_LINGR_MS", "did you mean ENGINE_LINGER_MS"]),
    "config_file_missing": (["relay", "--config", "/nonexistent/engine.toml"], {},
                            ["/nonexistent/engine.toml", "no such file"]),
    "replay_spool_missing": (["replay", "--spool", "/nope", "--to", "http://127.0.0.1:9"], {},
                             ["--spool", "/nope", "no such directory"]),
    "replay_dead_letters_missing": (["replay", "--dead-letters", "/nope.jsonl", "--to",
                                     "http://127.0.0.1:9"], {}, ["/nope.jsonl", "no such file"]),
    "replay_without_to": (["replay", "--spool", "/"], {}, ["--to"]),
    "ingest_file_missing": (["ingest", "/nope.jsonl"], {}, ["/nope.jsonl", "no such file"]),
    "ingest_project_without_slash": (["ingest", "--project", "noslash", "/dev/null"], {},
                                     ["noslash", "entity/project"]),
    "calls_project_without_slash": (["calls", "--project", "noslash"], {},
                                    ["noslash", "entity/project"]),
    "stats_bad_pid": (["stats", "--pid", "-3"], {}, ["-3", "process id"]),
    "log_level_from_env": (["calls", "--project", "a/b"], {"ENGINE_LOG_LEVEL": "bogus"},
                           ["ENGINE_LOG_LEVEL", "'bogus'", "debug, info, warning, error"]),
    "log_format_from_env": (["calls", "--project", "a/b"], {"ENGINE_LOG_FORMAT": "yaml"},
                            ["ENGINE_LOG_FORMAT", "'yaml'", "text, logfmt, json"]),
    "unknown_command": (["serv"], {}, ["serv", "invalid choice"]),
    "unknown_flag": (["serve", "--prot", "1"], {}, ["serve", "--prot"]),
}


@pytest.mark.parametrize("case", sorted(USAGE_CASES))
def test_usage_error_is_one_line_with_exit_2(case):
    argv, env, needles = USAGE_CASES[case]
    _assert_one_line_error(_engine(*argv, env=env), USAGE, *needles)


@pytest.mark.parametrize(("text", "needles"), [
    ("[engin]\nlinger_ms = 5\n", ["[engin]", "did you mean [engine]"]),
    ("[engine]\nlingr_ms = 5\n", ["lingr_ms", "did you mean linger_ms"]),
    ("[engine]\nlinger_ms = 'soon'\n", ["linger_ms"]),
    ("[engine\n", ["not valid TOML"]),
])  # fmt: skip
def test_config_file_errors_are_one_line_with_exit_2(tmp_path, text, needles):
    result = _engine("relay", "--config", _toml(tmp_path, text))
    _assert_one_line_error(result, USAGE, *needles)


@pytest.mark.parametrize(("argv", "where"), [
    (["ingest", "--api-key", "sk-SECRET123", "x.jsonl"], "$ENGINE_API_KEY"),
    (["doctor", "http://127.0.0.1:9", "--api-key", "sk-SECRET123"], "$ENGINE_API_KEY"),
    (["calls", "--project", "a/b", "--api-key=sk-SECRET123"], "$ENGINE_API_KEY"),
    (["copy", "--from", "http://127.0.0.1:9", "--to", "http://127.0.0.1:8", "--api-k",
      "sk-SECRET123"], "$ENGINE_COPY_FROM_API_KEY"),
    (["serve", "--api-key=sk-SECRET123"], "--keys-file"),
])
def test_a_key_flag_is_refused_by_every_command_without_echoing_it(argv, where):
    # before: argparse echoed it ("argument FILE: sk-SECRET123: no such file",
    # "unrecognized arguments: --api-key sk-SECRET123"); only serve and relay refused it
    result = _engine(*argv)
    _assert_one_line_error(result, USAGE, "--api-key is not accepted", "(ps)", where)
    assert "sk-SECRET123" not in result.stderr + result.stdout


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("typo", [
    ["--apikey", "sk-SECRET123"], ["--apikey=sk-SECRET123"], ["--bogus", "sk-SECRET123", "x.jsonl"],
])  # fmt: skip
def test_an_unknown_flag_is_named_without_the_value_after_it(command, typo, capsys):
    # before: "unrecognized arguments: --apikey sk-SECRET123", or a positional took the
    # value ("argument FILE: sk-SECRET123: no such file"); only --api-key was kept back
    code = main([command, *typo])
    err = capsys.readouterr().err
    assert code == USAGE and len(err.splitlines()) == 1 and err.startswith("engine: error: "), err
    assert "sk-SECRET123" not in err
    assert typo[0].partition("=")[0] in err


def test_an_unknown_flag_before_the_command_or_an_ambiguous_one_hides_its_value(capsys):
    # before: the value was taken for the command ("invalid choice: 'sk-SECRET123'"), and
    # "ambiguous option: --p=sk-SECRET123 could match --port, --parent-pid"
    assert main(["--apikey", "sk-SECRET123", "serve"]) == USAGE
    assert main(["serve", "--p=sk-SECRET123"]) == USAGE
    unknown, ambiguous = capsys.readouterr().err.splitlines()
    assert "unrecognized arguments: --apikey" in unknown and "sk-SECRET123" not in unknown
    assert "ambiguous option: --p could match --port" in ambiguous
    assert "sk-SECRET123" not in ambiguous


def test_db_that_is_a_directory_is_a_usage_error(tmp_path):
    _assert_one_line_error(_engine("serve", "--port", "0", "--db", str(tmp_path)), USAGE,
                           str(tmp_path), "directory")


def test_db_beside_a_store_that_is_not_sqlite_is_a_usage_error(tmp_path):
    _assert_one_line_error(_engine("serve", "--port", "0", "--store", "count", "--db",
                                   str(tmp_path / "x.db")), USAGE, "--db", "--store count")
    assert not (tmp_path / "x.db").exists()


def test_port_in_use_is_one_line_with_exit_1():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _engine("serve", "--port", str(port), "--store", "count")
    _assert_one_line_error(result, FAILED, f"127.0.0.1:{port}", "already in use", "--port")


def test_port_in_use_leaves_no_new_store_behind_but_keeps_an_existing_one(tmp_path):
    kept = tmp_path / "kept.db"
    with serve_subprocess(kept):
        pass
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        for db in (tmp_path / "new.db", kept):
            _assert_one_line_error(_engine("serve", "--port", port, "--db", str(db)), FAILED,
                                   "already in use")
    assert kept.exists() and not list(tmp_path.glob("new.db*"))


def test_serve_refuses_a_sqlite_database_of_something_else(tmp_path):
    other = tmp_path / "other-app.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE x (a)").connection.close()
    result = _engine("serve", "--port", "0", "--db", str(other))
    _assert_one_line_error(result, FAILED, str(other), "tables: x", "not an engine serve store")
    db = sqlite3.connect(other)
    assert [r[0] for r in db.execute("SELECT name FROM sqlite_master")] == ["x"]
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # not switched to WAL
    db.close()


def test_unreachable_server_is_one_line_with_exit_1():
    result = _engine("calls", "--project", "a/b", "--url", "http://127.0.0.1:9")
    _assert_one_line_error(result, FAILED, "127.0.0.1:9", "connection refused")


def test_replay_toward_a_wrong_path_stops_but_toward_a_down_server_tries(tmp_path):
    with serve_subprocess(tmp_path / "t.db") as url:
        wrong = _engine("replay", "--to", url + "/api", env={"XDG_STATE_HOME": str(tmp_path)})
    _assert_one_line_error(wrong, FAILED, "replay:", "/api/server_info answered 404")
    down = _engine("replay", "--to", "http://127.0.0.1:9", env={"XDG_STATE_HOME": str(tmp_path)})
    assert "cannot reach" in down.stderr and "trying anyway" in down.stderr
    assert "Traceback" not in down.stderr


def test_wrong_path_and_non_server_are_one_line_with_exit_1(tmp_path):
    with serve_subprocess(tmp_path / "t.db") as url:
        wrong_path = _engine("relay", "--upstream", url + "/api", "--listen", "127.0.0.1:0")
        not_json = _engine("calls", "--project", "a/b", "--url", url + "/metrics/x")
    _assert_one_line_error(wrong_path, FAILED, "/api/server_info answered 404", "wrong path")
    _assert_one_line_error(not_json, FAILED, "404")


def test_stats_without_an_engine_is_one_line_with_exit_1():
    _assert_one_line_error(_engine("stats", "--once", "--pid", "1"), FAILED,
                           "no running engine found for pid 1")


def test_debug_flag_and_log_level_show_the_traceback():
    for result in (_engine("--debug", "stats", "--once", "--pid", "1"),
                   _engine("stats", "--once", "--pid", "1", "--debug"),
                   _engine("stats", "--once", "--pid", "1", env={"ENGINE_LOG_LEVEL": "debug"})):
        assert result.returncode == FAILED
        assert "Traceback" in result.stderr
        assert result.stderr.splitlines()[-1].startswith("engine: error: stats: no running engine")


def test_version_and_bare_command():
    from engine import __version__

    version = _engine("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"engine {__version__}"
    bare = _engine()
    assert bare.returncode == USAGE and "COMMAND" in bare.stderr


def test_version_is_the_installed_distributions():
    from importlib.metadata import version

    from engine import __version__

    assert __version__ == version("engine")


def test_sigterm_within_a_command_raises_terminated_once_then_restores_the_handler():
    import signal

    from engine.cli._args import Terminated, sigterm_interrupts

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated), sigterm_interrupts():
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # the handler runs at the next bytecode boundary
            pass
    assert signal.getsignal(signal.SIGTERM) is before
    with sigterm_interrupts():  # while stopping, a second SIGTERM is ignored
        with pytest.raises(Terminated):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):
                pass
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):
            pass
    assert signal.getsignal(signal.SIGTERM) is before
