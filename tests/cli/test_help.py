"""``engine <command> --help`` names each option's default, in plain text."""

import re

import pytest

from engine.cli import build_parser


def _help(command: str | None) -> str:
    parser = build_parser()
    if command is None:
        return parser.format_help()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    return " ".join(subparsers.choices[command].format_help().split())


@pytest.mark.parametrize(("command", "flag", "shown"), [
    ("serve", "--max-body-bytes", "(default 32 MiB)"),
    ("relay", "--max-body-bytes", "(default 32 MiB)"),
    ("demo", "--processes", "(default 2)"),
    ("demo", "--examples", "(default 5000)"),
    ("demo", "--compression", "auto (the default"),
    ("ingest", "--checkpoint-lines", "(default 20,000)"),
    ("ingest", "--project", "(default: each item's own project_id)"),
    ("ingest", "FILE", "JSON-lines trace file(s)"),
    ("stats", "--interval-s", "(default 1.0)"),
    ("calls", "--interval-s", "(default 1.0)"),
])  # fmt: skip
def test_help_names_the_default(command, flag, shown):
    text = _help(command)
    assert re.search(rf"\s{re.escape(flag)}\b[^\n]*?{re.escape(shown)}", text), text


def test_the_top_level_description_is_plain_text():
    assert "``" not in _help(None)
