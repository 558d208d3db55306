"""Configuration: precedence flag > env > file > default, errors naming the field, secrets
kept out of repr and logs, and config/engine.toml documenting every setting."""

import io
import logging
import re
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

from engine import cli
from engine.cli import _args
from engine.common import _logging
from engine.common._config import (
    EngineConfig,
    api_key_source,
    default_spool_dir,
    load_config,
    spool_path,
)
from engine.common._errors import ConfigError

DOCUMENTED = Path(__file__).resolve().parents[2] / "config" / "engine.toml"
SECRET = "sk-test-0123456789abcdef"


def _toml(tmp_path, text: str) -> Path:
    path = tmp_path / "engine.toml"
    path.write_text("[engine]\n" + text)
    return path


def test_default_applies_when_nothing_is_set():
    assert load_config(environ={}).linger_ms == EngineConfig().linger_ms


def test_file_overrides_default(tmp_path):
    assert load_config(_toml(tmp_path, "linger_ms = 7\n"), environ={}).linger_ms == 7


def test_env_overrides_file(tmp_path):
    cfg = load_config(_toml(tmp_path, "linger_ms = 7\n"), environ={"ENGINE_LINGER_MS": "9"})
    assert cfg.linger_ms == 9


def test_argument_overrides_env_and_file(tmp_path):
    cfg = load_config(_toml(tmp_path, "linger_ms = 7\n"), environ={"ENGINE_LINGER_MS": "9"},
                      linger_ms=11)
    assert cfg.linger_ms == 11


def test_command_line_flag_overrides_env_and_file(tmp_path):
    args = cli.build_parser().parse_args(
        ["relay", "--config", str(_toml(tmp_path, "linger_ms = 7\n")), "--linger-ms", "13"])
    cfg = load_config(args.config, environ={"ENGINE_LINGER_MS": "9"}, project="a/b",
                      **_args.config_overrides(args))
    assert cfg.linger_ms == 13


def test_config_file_from_engine_config_env(tmp_path):
    path = _toml(tmp_path, 'compression = "none"\n')
    assert load_config(environ={"ENGINE_CONFIG": str(path)}).compression == "none"


@pytest.mark.parametrize(("setting", "value"), [
    ("linger_ms", -1), ("ring_bytes", 1000), ("on_full", "explode"), ("max_in_flight", 0),
    ("compression_level", 99), ("url", "ftp://x"), ("project", "no-slash"),
    ("request_timeout_s", "soon"),
])  # fmt: skip
def test_invalid_value_fails_naming_the_field(setting, value):
    with pytest.raises(ConfigError, match=setting):
        load_config(environ={}, **{setting: value})


@pytest.mark.parametrize(("settings", "field", "said"), [
    ({"shutdown_timeout_s": float("nan")}, "shutdown_timeout_s", "finite"),
    ({"delivery_deadline_s": float("inf")}, "delivery_deadline_s", "finite"),
    ({"url": "http://127.0.0.1:99999"}, "url", "port out of range"),
    ({"url": "http://"}, "url", "names no host"),
    ({"backoff_initial_ms": 5000, "backoff_max_ms": 10}, "backoff_initial_ms", "backoff_max_ms"),
    ({"max_slots": 10**7}, "max_slots", "at most 65536"),
    ({"ring_bytes": 1 << 40}, "ring_bytes", "4 GiB"),
])  # fmt: skip
def test_values_the_sender_could_not_run_with_fail_at_start(settings, field, said):
    """Each passed validation, and its sender then crashed at start, restarted again and
    again, delivering nothing (NaN and inf were written to its settings as null); a ring set
    left behind carried them to every later engine recovering it."""
    with pytest.raises(ConfigError, match=f"^{field}: .*{said}"):
        load_config(environ={}, **settings)


def test_invalid_env_value_names_the_variable():
    with pytest.raises(ConfigError, match="max_in_flight"):
        load_config(environ={"ENGINE_MAX_IN_FLIGHT": "lots"})


def test_invalid_file_value_and_unknown_setting_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="linger_ms"):
        load_config(_toml(tmp_path, 'linger_ms = "soon"\n'), environ={})
    with pytest.raises(ConfigError, match="lingr_ms"):
        load_config(_toml(tmp_path, "lingr_ms = 1\n"), environ={})


def test_api_key_never_appears_in_repr_or_str():
    cfg = load_config(environ={"ENGINE_API_KEY": SECRET})
    assert cfg.api_key == SECRET
    assert SECRET not in repr(cfg) and SECRET not in str(cfg) and "***" in repr(cfg)


def test_a_config_file_holding_a_key_that_others_may_read_is_refused(tmp_path):
    # before: used with no word; a keys file of that mode is refused, so is this now
    path = _toml(tmp_path, f'api_key = "{SECRET}"\n')
    path.chmod(0o644)
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert f"chmod 600 {path}" in str(err.value) and SECRET not in str(err.value)
    path.chmod(0o600)
    assert load_config(path, environ={}).api_key == SECRET
    assert api_key_source(path, environ={}) == f"api_key in {path}"
    assert api_key_source(path, environ={"ENGINE_API_KEY": "k"}) == "$ENGINE_API_KEY"
    shared = _toml(tmp_path, "linger_ms = 5\n")  # no key: anyone may read it
    shared.chmod(0o644)
    assert load_config(shared, environ={}).linger_ms == 5


def test_wandb_api_key_is_the_fallback_key():
    assert load_config(environ={"WANDB_API_KEY": SECRET}).api_key == SECRET


@pytest.mark.parametrize("log_format", ["logfmt", "json"])
def test_structured_logs_never_show_key_values(log_format):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_logging.StructuredFormatter(log_format))
    logger = logging.getLogger(f"engine.test_config.{log_format}")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("upstream refused", extra={"api_key": SECRET, "authorization": SECRET,
                                                   "upstream": "http://127.0.0.1:1"})
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert SECRET not in text and "upstream refused" in text and "127.0.0.1:1" in text


def test_engine_toml_documents_every_setting_with_its_default():
    text = DOCUMENTED.read_text()
    table = tomllib.loads(text)["engine"]
    defaults = EngineConfig()
    for name in EngineConfig.__struct_fields__:
        if name in table:
            assert table[name] == getattr(defaults, name), name
        else:  # settings without a usable default are shown commented out
            assert re.search(rf"^# {name} = ", text, re.MULTILINE), name
    assert load_config(DOCUMENTED, environ={}) == defaults


def test_the_sender_command_line_carries_no_api_key():
    """The key reaches the sender through its environment, never its argv (ps shows argv)."""
    from engine.producer._engine import Engine

    with Engine(project="a/b", api_key=SECRET, start_sender=False) as engine:
        args_path = engine._write_sender_args()  # the sender's argv is only this path
        with open(args_path) as args:
            assert SECRET not in args.read()


def test_the_sender_args_name_the_files_as_the_engine_resolved_them(tmp_path, monkeypatch):
    """Whoever recovers the ring set (another process, folder and $HOME) writes where this
    engine would have: the default dead-letter file under this engine's state folder, a
    relative spool from this engine's folder."""
    import msgspec

    from engine.producer._engine import Engine

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    with (Engine(project="a/b", spool_dir="spool", start_sender=False) as engine,
          open(engine._write_sender_args(), "rb") as args):
        config = msgspec.json.decode(args.read())["config"]
    assert config["dead_letter_path"] == str(tmp_path / "state" / "engine" / "dead_letters.jsonl")
    assert config["spool_dir"] == str(tmp_path / "spool")


def test_misspelt_env_variable_is_refused_when_asked_naming_the_one_meant():
    with pytest.raises(ConfigError, match="ENGINE_LINGR_MS.*did you mean ENGINE_LINGER_MS"):
        load_config(environ={"ENGINE_LINGR_MS": "5", "ENGINE_UNKNOWN_ENV": "error"})


def test_misspelt_env_variable_warns_once_in_the_library(caplog):
    """ENGINE_ is a generic prefix: another tool's variable warns, never stops an eval."""
    environ = {"ENGINE_LINGR_MS2": "5"}
    with caplog.at_level(logging.WARNING, logger="engine.config"):
        cfg = load_config(environ=environ)
        load_config(environ=environ)
    assert cfg.linger_ms == EngineConfig().linger_ms
    assert caplog.text.count("ENGINE_LINGR_MS2 is not a variable engine reads") == 1
    assert "ENGINE_UNKNOWN_ENV=error" in caplog.text


def test_declared_variables_that_are_not_settings_are_accepted():
    from engine.common import _env

    environ = {name: "1" for name in _env.OTHER_VARIABLES if name != "ENGINE_CONFIG"}
    environ["ENGINE_UNKNOWN_ENV"] = "error"
    assert load_config(environ=environ).api_key == "1"


def test_unknown_table_and_key_in_the_file_suggest_the_right_name(tmp_path):
    path = tmp_path / "engine.toml"
    path.write_text("[engin]\nlinger_ms = 5\n")
    with pytest.raises(ConfigError, match=r"\[engin\].*did you mean \[engine\]"):
        load_config(path, environ={})
    with pytest.raises(ConfigError, match="lingr_ms.*did you mean linger_ms"):
        load_config(_toml(tmp_path, "lingr_ms = 5\n"), environ={})


def test_every_engine_variable_the_project_reads_is_declared():
    """A variable set by scripts/ or read anywhere must be declared in engine/common/_env.py,
    or every Engine() in that environment would refuse it as a typo."""
    from engine.common import _env

    root = DOCUMENTED.parents[1]
    files = [*root.glob("engine/**/*.py"), *root.glob("scripts/*"), *root.glob("bench/**/*.py"),
             *root.glob("tests/**/*.py"), root / ".ci" / "run"]
    names = set()
    for path in files:
        if path.is_file():
            names |= set(re.findall(r"(?<![A-Za-z0-9_])ENGINE_[A-Z0-9_]*[A-Z0-9]", path.read_text()))
    deliberate_typos = {"ENGINE_LINGR_MS", "ENGINE_LINGR_MS2"}  # the tests of the typo check itself
    names.discard("ENGINE_DIR")  # tests/test_layout.py: a Python name, not a variable
    known = _env.known_variables(EngineConfig.__struct_fields__)
    assert names - known - deliberate_typos == set()


def test_compression_threads_auto_is_half_the_cores_within_the_in_flight_limit():
    from engine.common._config import compression_thread_count

    auto = load_config(environ={})
    assert auto.compression_threads == "auto"
    assert [compression_thread_count(auto, cpus) for cpus in (1, 2, 4, 64)] == [1, 1, 2, 8]
    fixed = load_config(environ={"ENGINE_COMPRESSION_THREADS": "3"})
    assert compression_thread_count(fixed, 64) == 3
    for bad in ("0", "many"):
        with pytest.raises(ConfigError, match="compression_threads"):
            load_config(environ={"ENGINE_COMPRESSION_THREADS": bad})


@pytest.mark.parametrize(("given", "kept"), [("AUTO", "auto"), (" Off ", None), ("NONE", None),
                                             ("", None), ("auto", "auto")])
def test_spool_dir_s_words_are_words_in_any_case_not_folders(monkeypatch, given, kept):
    """``ENGINE_SPOOL_DIR=AUTO`` (or "Off") is the setting's word, not a folder of that name
    in the working directory."""
    monkeypatch.setenv("ENGINE_SPOOL_DIR", given)
    cfg = load_config(None, url="http://127.0.0.1:8080", project="e/p")
    assert cfg.spool_dir == kept
    assert spool_path(cfg) == (None if kept is None else str(default_spool_dir(cfg.url)))
    assert spool_path(EngineConfig(url=cfg.url, spool_dir=given)) == spool_path(cfg)
