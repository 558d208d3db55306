"""The machine token: what a server advertises so a sender can tell it shares its memory."""

import re

import pytest

from engine.common import _machine
from engine.sender._transport import choose_compression


@pytest.fixture
def fresh_token(monkeypatch):
    """machine_token() recomputed from a boot id file of the test's choosing."""
    def use(path):
        monkeypatch.setattr(_machine, "BOOT_ID_PATH", str(path))
        _machine.machine_token.cache_clear()
        return _machine.machine_token()

    yield use
    _machine.machine_token.cache_clear()


def test_the_token_is_a_keyed_hash_of_the_boot_id_never_the_id(fresh_token, tmp_path):
    boot = tmp_path / "boot_id"
    boot.write_text("0b5f3ad6-9a4e-4a53-8d1c-7c4a3c0f2e11\n")
    token = fresh_token(boot)
    assert re.fullmatch(r"[0-9a-f]{24}", token)
    assert "0b5f3ad6" not in token
    boot.write_text("0b5f3ad6-9a4e-4a53-8d1c-7c4a3c0f2e12\n")  # another boot, another token
    assert fresh_token(boot) not in (None, token)


def test_no_boot_id_means_no_token_and_never_the_same_machine(fresh_token, tmp_path):
    assert fresh_token(tmp_path / "missing") is None
    assert not _machine.same_machine({"machine": None})
    assert not _machine.same_machine({})


def test_this_machine_has_a_token_and_recognises_it():
    token = _machine.machine_token()
    assert token is not None  # Linux: the tests run where /proc has a boot id
    assert _machine.same_machine({"machine": token})
    assert not _machine.same_machine({"machine": "0" * 24})
    assert not _machine.same_machine({"machine": 7})
    assert not _machine.same_machine(None)
    assert not _machine.same_machine(["machine", token])


@pytest.mark.parametrize("setting, info, expected", [
    ("auto", {"accepts_encodings": ["zstd", "gzip"]}, "zstd"),  # elsewhere (says nothing)
    ("auto", {"accepts_encodings": ["zstd"], "machine": "0" * 24}, "zstd"),  # another machine
    ("auto", {"accepts_encodings": ["zstd"], "machine": "THIS"}, "none"),  # this machine
    ("auto", {"accepts_encodings": ["gzip"]}, "none"),  # no zstd
    ("auto", None, "none"),  # no /server_info answer
    ("zstd", {"accepts_encodings": ["zstd"], "machine": "THIS"}, "zstd"),  # asked for
    ("zstd", None, "zstd"),
    ("none", {"accepts_encodings": ["zstd"]}, "none"),
])  # fmt: skip
def test_auto_compresses_toward_a_server_that_accepts_zstd_on_another_machine(setting, info, expected):
    if isinstance(info, dict) and info.get("machine") == "THIS":
        info = {**info, "machine": _machine.machine_token()}
    choice, why = choose_compression(setting, info)
    assert choice == expected
    assert why  # said in the sender's debug log
