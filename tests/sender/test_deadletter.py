import os
import stat

import msgspec
import pytest

from engine.sender._deadletter import DeadLetters, read_dead_letters

ITEM = b'{"project_id":"ent/proj","id":"c1","inputs":{"q":"caf\xc3\xa9\\n"},"output":null}'


def add(letters: DeadLetters, call_id: str = "c1", reason: str = "422", item: bytes = ITEM) -> None:
    letters.add(
        reason=reason,
        status=422 if reason == "422" else None,
        call_id=call_id,
        route="/call/upsert_batch",
        project="ent/proj",
        item_json=item,
    )


def test_dead_letter_file_is_created_0600_on_first_add(tmp_path):
    path = tmp_path / "dead" / "letters.jsonl"
    with DeadLetters(path) as letters:
        assert not path.exists()
        add(letters)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_the_folders_made_for_the_file_are_0700(tmp_path):
    # before: mkdir(parents=True) left the parents it made to the umask (0755)
    path = tmp_path / "state" / "engine" / "letters.jsonl"
    with DeadLetters(path) as letters:
        add(letters)
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "state" / "engine").stat().st_mode) == 0o700


def test_existing_file_is_tightened_to_0600(tmp_path):
    path = tmp_path / "letters.jsonl"
    path.write_bytes(b"")
    os.chmod(path, 0o644)
    with DeadLetters(path) as letters:
        add(letters)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_each_line_embeds_the_item_as_json(tmp_path):
    path = tmp_path / "letters.jsonl"
    with DeadLetters(path) as letters:
        add(letters)
    (line,) = path.read_bytes().splitlines()
    record = msgspec.json.decode(line)
    assert record["item"] == msgspec.json.decode(ITEM)
    assert record["reason"] == "422" and record["status"] == 422 and record["call_id"] == "c1"
    assert record["route"] == "/call/upsert_batch" and record["project"] == "ent/proj"
    assert record["ts"].endswith("Z")


def test_counts_by_reason(tmp_path):
    with DeadLetters(tmp_path / "letters.jsonl") as letters:
        add(letters, "a", "422")
        add(letters, "b", "422")
        add(letters, "c", "413_single_item")
        assert letters.counts == {"422": 2, "413_single_item": 1}


def test_replay_reader_returns_items_byte_for_byte_in_order(tmp_path):
    path = tmp_path / "letters.jsonl"
    items = [msgspec.json.encode({"id": f"c{i}", "v": [i, None, "x"]}) for i in range(5)]
    with DeadLetters(path) as letters:
        for i, item in enumerate(items):
            add(letters, f"c{i}", item=item)
    letters_read = list(read_dead_letters(path))
    assert [d.call_id for d in letters_read] == [f"c{i}" for i in range(5)]
    assert [d.item_json for d in letters_read] == items


def test_appends_across_reopen(tmp_path):
    path = tmp_path / "letters.jsonl"
    for call_id in ("a", "b"):
        with DeadLetters(path) as letters:
            add(letters, call_id)
    assert [d.call_id for d in read_dead_letters(path)] == ["a", "b"]


def test_pretty_printed_item_is_stored_on_one_line(tmp_path):
    path = tmp_path / "letters.jsonl"
    with DeadLetters(path) as letters:
        add(letters, item=b'{\n  "id": "c1",\n  "s": "a\\nb"\n}')
    (letter,) = read_dead_letters(path)
    assert letter.item_json == b'{"id":"c1","s":"a\\nb"}'


def test_an_item_that_is_not_json_is_kept_as_its_text_flagged_and_logged(tmp_path, caplog):
    # refusing it raised in the sender, which died on it, was restarted on the same record
    # and died again: one bad item stopped every delivery (msgspec < 0.23 writes a NaN
    # Decimal inside a dict with int keys as NaN)
    path = tmp_path / "letters.jsonl"
    bad = b'{"id":"c9","inputs":{"0":NaN},"s":"caf\xc3\xa9 \xff"}'
    with DeadLetters(path) as letters:
        letters.add_batch(reason="400", status=400, route="/call/upsert_batch",
                          items=[("c8", "ent/proj", ITEM), ("c9", "ent/proj", bad)])
    good_line, bad_line = path.read_bytes().splitlines()
    assert msgspec.json.decode(good_line)["item"] == msgspec.json.decode(ITEM)
    assert "item_invalid" not in msgspec.json.decode(good_line)
    record = msgspec.json.decode(bad_line)  # the line itself is JSON
    assert record["item_invalid"] is True and record["call_id"] == "c9"
    assert record["item"] == '{"id":"c9","inputs":{"0":NaN},"s":"caf\u00e9 \\xff"}'
    first, second = read_dead_letters(path)
    assert first.item_json == ITEM and not first.item_invalid
    assert second.item_invalid and second.item_json == bad.replace(b"\xff", b"\\xff")
    assert "call c9: the item cannot be read as JSON" in caplog.text


# past any stack: msgspec decodes as deep as the C recursion limit, which is the Python one
# (1,000) on 3.10/3.11, about 1,500 on 3.12 and 10,000 on 3.13 (5,000 levels decoded there)
DEEP_LEVELS = 100_000
DEEP = b'{"id":"c7","inputs":{"v":' + b"[" * DEEP_LEVELS + b"1" + b"]" * DEEP_LEVELS + b"}}"


@pytest.mark.parametrize("pretty", [False, True], ids=["compact", "pretty"])
def test_an_item_nested_too_deep_to_decode_is_kept_as_its_text_flagged(tmp_path, caplog,
                                                                        pretty):
    # decoding it raised RecursionError in the sender, which died on it, was restarted on
    # the same record and died again; its ring filled and the user's program blocked
    path = tmp_path / "letters.jsonl"
    item = DEEP.replace(b":", b": \n") if pretty else DEEP
    with DeadLetters(path) as letters:
        letters.add_batch(reason="422", status=422, route="/call/upsert_batch",
                          items=[("c7", "ent/proj", item), ("c8", "ent/proj", ITEM)])
    deep, good = read_dead_letters(path)
    assert deep.item_invalid and deep.item_json == item and deep.call_id == "c7"
    assert good.item_json == ITEM and not good.item_invalid
    assert "call c7: the item cannot be read as JSON (nested too deep" in caplog.text


def test_a_line_nested_too_deep_to_decode_is_set_aside_by_the_reader(tmp_path):
    path = tmp_path / "letters.jsonl"
    with DeadLetters(path) as letters:
        add(letters, "a")
    with open(path, "ab") as file:  # an item embedded as JSON by an engine that did not look
        file.write(b'{"ts":"t","reason":"422","status":422,"call_id":"c7","route":"/r",'
                   b'"project":"p","item":' + DEEP + b"}\n")
    with DeadLetters(path) as letters:
        add(letters, "b")
    malformed = []
    read = list(read_dead_letters(path, lambda number, line: malformed.append(number)))
    assert [x.call_id for x in read] == ["a", "b"] and malformed == [2]


def test_a_spooled_body_with_an_item_nested_too_deep_to_decode_splits_into_its_items():
    from engine.sender._resend import describe, make_body, split_body

    route = "/call/upsert_batch"
    items = [ITEM, DEEP, b'{"s":"a,]}\\\"[{"}']
    assert split_body(route, make_body(route, items)) == items
    assert describe(route, DEEP) == (None, "")


def test_reader_skips_a_torn_last_line(tmp_path):
    path = tmp_path / "letters.jsonl"
    with DeadLetters(path) as letters:
        add(letters, "a")
    with open(path, "ab") as file:
        file.write(b'{"ts":"2026-01-01T00:00:00Z","reason":"4')
    assert [d.call_id for d in read_dead_letters(path)] == ["a"]


def test_reader_reports_corruption_in_the_middle(tmp_path):
    path = tmp_path / "letters.jsonl"
    with DeadLetters(path) as letters:
        add(letters, "a")
    with open(path, "ab") as file:
        file.write(b"garbage\n")
    with DeadLetters(path) as letters:
        add(letters, "b")
    with pytest.raises(ValueError, match=r"letters.jsonl:2: malformed"):
        list(read_dead_letters(path))


def test_a_claim_takes_the_file_and_the_writer_starts_a_new_one(tmp_path):
    from engine.sender._deadletter import claim

    path = tmp_path / "letters.jsonl"
    with DeadLetters(path) as letters:
        add(letters, "c1")
        claimed = claim(path)
        add(letters, "c2")  # the writer finds its file claimed and reopens the path
    assert [x.call_id for x in read_dead_letters(claimed)] == ["c1"]
    assert [x.call_id for x in read_dead_letters(path)] == ["c2"]
    assert claim(tmp_path / "none.jsonl") is None


def test_files_of_a_claimer_that_died_are_claimed_again_and_a_live_ones_are_not(tmp_path):
    import subprocess
    import sys

    from engine.sender._deadletter import claim, claim_abandoned

    path = tmp_path / "letters.jsonl"
    with DeadLetters(path) as letters:
        add(letters, "mine")
    mine = claim(path)  # this process lives: its claim stands
    with DeadLetters(path) as letters:
        add(letters, "dead")
    dead = subprocess.run([sys.executable, "-c", "import sys; from engine.sender._deadletter "
                           "import claim; print(claim(sys.argv[1]))", str(path)],
                          capture_output=True, text=True, check=True).stdout.strip()
    taken = claim_abandoned(path)
    assert len(taken) == 1 and [x.call_id for x in read_dead_letters(taken[0])] == ["dead"]
    assert not os.path.exists(dead) and os.path.exists(mine)


def _dead_tag(n: int) -> str:
    """The tag of a claimer that is dead: this pid, started at another tick."""
    from engine.ring._files import process_start_ticks

    return f"{os.getpid()}-{process_start_ticks(os.getpid()) + 1}-{n}"


def _dead_claimer_name(path, n: int = 0) -> str:
    return f"{path}.claimed-{_dead_tag(n)}"


def _claimed_sent_and_kept(path):
    """A dead-letter file of two letters ("sent", then "kept"), claimed."""
    from engine.sender._deadletter import claim

    with DeadLetters(path) as letters:
        for call_id in ("sent", "kept"):
            add(letters, call_id)
    return claim(path)


def test_settle_makes_what_is_left_the_file_when_no_engine_started_one(tmp_path):
    from engine.sender._deadletter import settle

    path = tmp_path / "letters.jsonl"
    claimed = _claimed_sent_and_kept(path)
    settle(claimed, path, list(read_dead_letters(claimed))[1:])
    assert [x.call_id for x in read_dead_letters(path)] == ["kept"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert not claimed.exists() and os.listdir(tmp_path) == ["letters.jsonl"]


def test_settle_merges_what_is_left_with_a_file_engines_started_since_the_claim(tmp_path):
    """What is left, then what engines wrote since the claim, become the file at the path
    in one rename; an engine that still has the old file open writes to the new one."""
    from engine.sender._deadletter import claim, settle

    path = tmp_path / "letters.jsonl"
    claimed = _claimed_sent_and_kept(path)
    with DeadLetters(path) as engine_letters:
        add(engine_letters, "new")
        settle(claimed, path, list(read_dead_letters(claimed))[1:])
        add(engine_letters, "newer")  # its file was replaced: it reopens the path
    assert [x.call_id for x in read_dead_letters(path)] == ["kept", "new", "newer"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.listdir(tmp_path) == ["letters.jsonl"]
    settle(claim(path), path, [])  # all delivered: the claim just goes
    assert not path.exists() and os.listdir(tmp_path) == []


def test_a_settle_that_cannot_write_leaves_the_claim_and_the_file_as_they_were(
        tmp_path, monkeypatch):
    """The disk fills while what engines wrote is copied in: the claimed file holds just
    what is left and the dead-letter file is untouched, for the next replay."""
    import errno

    from engine.sender import _deadletter
    from engine.sender._deadletter import settle

    path = tmp_path / "letters.jsonl"
    claimed = _claimed_sent_and_kept(path)
    with DeadLetters(path) as letters:
        add(letters, "new")
    back = list(read_dead_letters(claimed))[1:]
    real_write_all = _deadletter._write_all

    def full(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").split("/")[-1].startswith("letters.jsonl.merging-"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write_all(fd, data)

    monkeypatch.setattr(_deadletter, "_write_all", full)
    with pytest.raises(OSError, match="No space"):
        settle(claimed, path, back)
    assert [x.call_id for x in read_dead_letters(claimed)] == ["kept"]
    assert [x.call_id for x in read_dead_letters(path)] == ["new"]
    assert sorted(os.listdir(tmp_path)) == sorted(["letters.jsonl", claimed.name])


def test_a_claim_that_died_merging_is_cut_back_to_its_own_letters(tmp_path):
    """Its claimer was killed while it copied what engines wrote into its claimed file
    (renamed ``.merging-…-<its size>``), before renaming it over the path: the next claim
    takes just its own letters; the path's file still holds the rest, once."""
    from engine.sender._deadletter import claim_abandoned

    path = tmp_path / "letters.jsonl"
    with DeadLetters(path) as letters:
        add(letters, "kept")
    size = os.stat(path).st_size
    merging = tmp_path / f"letters.jsonl.merging-{_dead_tag(0)}-{size}"
    os.rename(path, merging)
    with DeadLetters(path) as letters:
        add(letters, "new")
    with open(merging, "ab") as file:
        file.write(path.read_bytes()[:20])  # died copying
    taken = claim_abandoned(path)
    assert len(taken) == 1 and [x.call_id for x in read_dead_letters(taken[0])] == ["kept"]
    assert [x.call_id for x in read_dead_letters(path)] == ["new"]
    assert sorted(os.listdir(tmp_path)) == sorted(["letters.jsonl", taken[0].name])


def test_a_claim_that_died_after_linking_what_was_left_to_the_path_is_not_taken_twice(tmp_path):
    """Its claimer was killed between making the claimed file the dead-letter file (a hard
    link) and deleting its claimed name: the letters are sent once, from the file."""
    from engine.sender._deadletter import claim_abandoned

    path = tmp_path / "letters.jsonl"
    with DeadLetters(path) as letters:
        add(letters, "kept")
    os.link(path, _dead_claimer_name(path))
    assert claim_abandoned(path) == []
    assert os.listdir(tmp_path) == ["letters.jsonl"] and os.stat(path).st_nlink == 1
    assert [x.call_id for x in read_dead_letters(path)] == ["kept"]


def test_an_abandoned_name_of_a_file_a_live_replay_claimed_is_dropped_not_taken(tmp_path):
    """A replay before 2026-12-07 died between linking what it had left to the path and
    removing its claimed name; a live replay then claimed the path: the dead one's name is
    a second name of the file the live one sends. Before, the next replay took it too, and
    the letters were sent twice."""
    from engine.sender._deadletter import claim, claim_abandoned

    path = tmp_path / "letters.jsonl"
    with DeadLetters(path) as letters:
        add(letters, "kept")
    os.link(path, _dead_claimer_name(path))
    live = claim(path)  # this process lives: its claim stands
    assert claim_abandoned(path) == []
    assert os.listdir(tmp_path) == [live.name] and os.stat(live).st_nlink == 1


def test_two_abandoned_names_of_one_file_are_taken_once_and_scratch_files_removed(tmp_path):
    from engine.sender._deadletter import claim_abandoned

    path = tmp_path / "letters.jsonl"
    with DeadLetters(path) as letters:
        add(letters, "kept")
    first = _dead_claimer_name(path)
    os.rename(path, first)
    os.link(first, _dead_claimer_name(path, 1))
    (tmp_path / f"letters.jsonl.writeback-{_dead_tag(2)}").write_bytes(b"{")  # died writing
    taken = claim_abandoned(path)
    assert len(taken) == 1 and [x.call_id for x in read_dead_letters(taken[0])] == ["kept"]
    assert os.listdir(tmp_path) == [taken[0].name] and os.stat(taken[0]).st_nlink == 1


def test_a_torn_line_is_ended_by_the_next_writer_and_set_aside_by_the_reader(tmp_path):
    path = tmp_path / "letters.jsonl"
    with DeadLetters(path) as letters:
        add(letters, "c1")
    with open(path, "ab") as file:
        file.write(b'{"ts":"2026-01-01T00:00:00Z","reason":"x","sta')  # a writer killed mid-line
    with DeadLetters(path) as letters:
        add(letters, "c2")
    malformed = []
    read = list(read_dead_letters(path, lambda number, line: malformed.append(number)))
    assert [x.call_id for x in read] == ["c1", "c2"] and malformed == [2]


def test_a_failed_write_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "letters.jsonl"
    with DeadLetters(path) as letters:
        add(letters, "c1")
        before = path.read_bytes()
        real_write = os.write

        def half_then_full(fd, data):
            if fd == letters._fd:
                real_write(fd, bytes(data[: len(data) // 2]))
                raise OSError(28, "No space left on device")
            return real_write(fd, data)

        monkeypatch.setattr(os, "write", half_then_full)
        with pytest.raises(OSError):
            add(letters, "c2")
        monkeypatch.undo()
        assert path.read_bytes() == before
        add(letters, "c3")
    assert [x.call_id for x in read_dead_letters(path)] == ["c1", "c3"]


def test_a_file_holds_dead_letters_when_empty_or_when_any_line_is_one(tmp_path):
    from engine.sender._deadletter import holds_dead_letters

    path = tmp_path / "letters.jsonl"
    path.write_bytes(b"")
    assert holds_dead_letters(path)
    path.write_bytes(b'{"id":"c1","inputs":{}}\n{"id":"c2"}\n')  # calls, say: no dead letter
    assert not holds_dead_letters(path)
    path.write_bytes(b'{"ts":"2026-01-01T00:00:00Z","rea\n')  # torn by a crash ...
    with DeadLetters(path) as letters:
        add(letters, "c3")  # ... then a whole letter
    assert holds_dead_letters(path)
