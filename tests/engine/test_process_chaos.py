"""Seeded process chaos: the pipeline's own processes killed and stopped at random moments,
while they trace, toward a server with mild faults.

An owner process (``tests/engine/process_chaos_owner.py``, a subprocess this test starts as
the leader of a new process group) makes an Engine, starts 1-3 producer processes that trace
nested calls with a few KB of data (``tracer.call`` blocks, ``@tracer.op`` functions,
``call_start`` / ``call_end``, async ops open across each other, a call open across the
whole program) and record the id of every call whose block or op returned. For a seed,
``random.Random(seed)`` draws (``draw``) the engine's settings (1 or 2 senders, small rings),
the server (plain or weave's calls_complete, some 503s, a short outage), the programs, and
what happens to the processes meanwhile:

* SIGKILL of a sender, 1-3 times (the owner restarts it; it re-reads from the release
  positions);
* SIGSTOP of a sender for 0.2-3 s, then SIGCONT (a debugger, a cgroup freeze);
* SIGKILL of producer processes mid-loop;
* then either the owner closes the engine (every stop ended; now and then a sender is
  killed or stopped as close() begins), or SIGKILL of the owner's process group, mostly
  together with its senders (the ring set stays in /dev/shm), recovered by a new Engine
  for the same URL in this process or by ``engine replay --to URL`` (a sender left alive
  drains on its own, and the recovery finds nothing).

Checked after the recovery (and an ``engine replay`` of what was persisted, once the server
is healthy):

* every call recorded as returned is stored whole on the server: its start and end fields,
  its inputs and output as the producer wrote them (repeats merged by id by the server);
* nothing was dead-lettered for a reason that means loss (only the deadline, the shutdown,
  an outage, a start not delivered);
* no ring set is left (the closing engine or the recovery removed it);
* no exception was raised into a producer's code, and each producer ran to its end or
  died by our SIGKILL; no traceback in the owner's or the senders' log; a closed engine
  left nothing undelivered and dropped nothing.

The default is a fixed set of seeds (``SEEDS``); more::

    ENGINE_PROCESS_CHAOS_SEEDS=60 pytest tests/engine/test_process_chaos.py      # 0..59
    ENGINE_PROCESS_CHAOS_SEEDS=60-90 pytest tests/engine/test_process_chaos.py   # 60..89

Each seed takes 1-15 s on a 2-core box. A failure names the scenario it drew; ``-s`` shows
what each seed did.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from random import Random
from typing import Any

import pytest

import engine
from engine.ring import _files as ring_files
from engine.sender._deadletter import read_dead_letters
from tests.engine.helpers import PROJECT, chaos_seeds
from tests.faultserver import FaultServer
from tests.pipeline import poll_until, wait_gone

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# the seeds that found a bug: 13 (close() in the pause before a killed sender's restart
# left what it held in shared memory), 39 (as 13, the sender killed just before close());
# and some that draw the other paths: 69 (weave's server, 2 senders, spawned producers, one
# killed, the group and senders killed, the next Engine recovers), 79 (2 senders, a stop,
# the senders then the group killed, engine replay recovers), 93 (the owner's group killed
# alone: its senders drain), 105 (weave's server, a stop, a producer killed, a sender
# killed as close() begins), 81 (weave's server, 2 senders, forkserver, stops)
SEEDS = (13, 39, 69, 79, 93, 105, 81)
ROOT = Path(__file__).resolve().parents[2]
# dead letters only for these reasons: the server refuses nothing for good
_PERSIST_REASONS = ("deadline", "shutdown", "start_not_delivered", "outage")
_START_TIMEOUT_S = 30.0
_RUN_TIMEOUT_S = 90.0  # producers through every fault drawn
_CLOSE_TIMEOUT_S = 40.0
_GONE_TIMEOUT_S = 40.0  # a recovery delivers within the dead engine's shutdown_timeout_s
_REPLAY_TIMEOUT_S = 60.0
_RESTART_WAIT_S = 10.0  # a sender killed 3 times is restarted after pauses of 0.5, 1, 2 s


@dataclass
class Scenario:
    seed: int
    kind: str  # plain, weave (calls_complete: an end is refused 404 until its start shows)
    server: dict[str, Any]
    settings: dict[str, Any]
    start_method: str
    programs: list[list[list]]
    # (at_s, what, target): kill_sender / stop_sender (target: shard; for_s in extra) /
    # kill_producer (target: its index)
    faults: list[tuple[float, str, int, float]] = field(default_factory=list)
    outage: tuple[float, float] | None = None  # (after_s, for_s)
    # close: the owner closes once the faults are over; else (at_s, how it is recovered:
    # "engine" or "replay", senders killed first or the owner's group first)
    kill: tuple[float, str, str] | None = None
    # (what, shard, after_s, for_s): a sender killed or stopped after_s into close()
    at_close: tuple[str, int, float, float] | None = None

    def describe(self) -> str:
        return (f"seed {self.seed}: {self.kind} server {self.server}, engine {self.settings}, "
                f"{self.start_method}, faults {self.faults}, outage {self.outage}, "
                f"{f'killed {self.kill}' if self.kill else 'closed'}"
                f"{f', at close {self.at_close}' if self.at_close else ''}, "
                f"programs {self.programs}")


def draw(seed: int) -> Scenario:
    rng = Random(seed)
    kind = rng.choice(("plain", "plain", "weave"))
    server: dict[str, Any] = dict(seed=seed, retry_after="0")
    server["p_503"] = round(rng.uniform(0.01, 0.08), 3) if rng.random() < 0.4 else 0.0
    if kind == "weave":
        server.update(weave_residence=True, end_needs_start=True,
                      start_visible_after_s=rng.choice((0.0, 0.05, 0.2)))
    senders = rng.choice((1, 1, 2))
    max_in_flight = rng.randint(1, 4)
    settings: dict[str, Any] = dict(
        ring_bytes=rng.choice((128 << 10, 256 << 10, 1 << 20)),
        senders=senders,
        max_in_flight=max_in_flight,
        initial_in_flight=rng.randint(1, max_in_flight),
        linger_ms=rng.choice((1, 5, 20)),
        eager_start_ms=rng.choice((50, 200, 1000)),
        compression=rng.choice(("none", "zstd")),
        shutdown_timeout_s=rng.choice((3.0, 5.0, 10.0)),
        max_slots=16, backoff_initial_ms=10, backoff_max_ms=200, delivery_deadline_s=30.0)
    start_method = rng.choice(("fork", "fork", "fork", "spawn", "forkserver"))
    span_s = rng.uniform(1.5, 4.0)  # about how long the programs run, unhindered
    producers = rng.randint(1, 3)
    programs = [_program(rng, span_s) for _ in range(producers)]
    faults = [(rng.uniform(0.05, span_s), "kill_sender", rng.randrange(senders), 0.0)
              for _ in range(rng.randint(1, 3))]
    faults += [(rng.uniform(0.05, span_s), "stop_sender", rng.randrange(senders),
                round(rng.uniform(0.2, 3.0), 2)) for _ in range(rng.choice((0, 0, 1, 2)))]
    faults += [(rng.uniform(0.1, span_s), "kill_producer", n, 0.0)
               for n in range(producers) if rng.random() < 0.3]
    faults = sorted((round(at_s, 2), what, target, for_s) for at_s, what, target, for_s in faults)
    outage = ((round(rng.uniform(0.2, 2.0), 2), round(rng.uniform(0.2, 1.5), 2))
              if rng.random() < 0.25 else None)
    kill = None
    if rng.random() < 0.4:
        kill = (round(rng.uniform(0.3, span_s + 0.5), 2), rng.choice(("engine", "replay")),
                rng.choice(("senders first", "owner first", "owner alone")))
    scenario = Scenario(seed, kind, server, settings, start_method, programs, faults, outage,
                        kill)
    # drawn last, so that the draws before it stay what they were when it came
    if kill is None and rng.random() < 0.35:
        stop_s = round(rng.uniform(0.2, settings["shutdown_timeout_s"] / 2), 2)
        scenario.at_close = (rng.choice(("kill_sender", "stop_sender")), rng.randrange(senders),
                             round(rng.uniform(0.0, 0.5), 2), stop_s)
    return scenario


def _program(rng: Random, span_s: float) -> list[list]:
    """Steps of a few KB of data each, paced so that the program lasts about ``span_s``."""
    steps: list[list] = []
    slept_s = 0.0
    while slept_s < span_s:
        data = rng.choice((1000, 2000, 4000))
        what = rng.random()
        if what < 0.3:
            steps.append(["nested", rng.randint(5, 60), rng.randint(1, 3), data])
        elif what < 0.45:
            steps.append(["ops", rng.randint(5, 60), data])
        elif what < 0.6:
            steps.append(["structs", rng.randint(5, 100), data])
        elif what < 0.72:
            count = rng.randint(10, 150)
            steps.append(["open", count, rng.randint(2, min(count, 50)), data])
        elif what < 0.78:
            steps.append(["outer", data])
        elif what < 0.88:
            pause_s = round(rng.uniform(0.0, 0.3), 2)
            steps.append(["long", rng.randint(1, 20), pause_s, data])
            slept_s += pause_s
        else:
            pause_s = round(rng.uniform(0.05, 0.4), 2)
            steps.append(["pause", pause_s])
            slept_s += pause_s
    return steps


# -- the processes --------------------------------------------------------------------------

class Owner:
    """The owner subprocess: its lines, its senders (found by their command line), its end."""

    def __init__(self, scenario: Scenario, url: str, work: Path) -> None:
        self.work = work
        self.log_path = work / "owner.log"
        args = {"url": url, "project": PROJECT, "work": str(work), "programs": scenario.programs,
                "start_method": scenario.start_method,
                "settings": {**scenario.settings,
                             "dead_letter_path": str(work / "dead_letters.jsonl")}}
        env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
        env.update(PYTHONPATH=str(ROOT), ENGINE_LOG_LEVEL="INFO")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.engine.process_chaos_owner", json.dumps(args)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env,
                cwd=str(ROOT), start_new_session=True)
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.info = json.loads(self.line(_START_TIMEOUT_S))
        self.producers = [(pid, ring_files.process_start_ticks(pid))
                          for pid in self.info["producers"]]

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._lines.put(line.decode())
        self._lines.put(None)

    def line(self, timeout_s: float) -> str:
        try:
            line = self._lines.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError(f"the owner said nothing for {timeout_s} s:\n"
                                 f"{self.log()[-3000:]}") from None
        if line is None:
            raise AssertionError(f"the owner exited {self.proc.wait()}:\n{self.log()[-3000:]}")
        return line

    def senders(self) -> dict[int, int]:
        """shard -> pid of the live senders of this owner's ring set."""
        found = {}
        for proc in os.listdir("/proc"):
            if not proc.isdigit():
                continue
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{proc}/cmdline").read_bytes().split(b"\0")
                if b"engine.sender" in argv and self.info["sender_args"].encode() in argv:
                    shard = int(argv[argv.index(b"--shard") + 1]) if b"--shard" in argv else 0
                    if ring_files.process_start_ticks(int(proc)) is not None:
                        found[shard] = int(proc)
        return found

    def group(self) -> list[int]:
        return [self.proc.pid, *(pid for pid, _ in self.producers)]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """SIGKILL whatever is left of it (test cleanup): its group, its senders."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for pid in self.senders().values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                stream.close()


def _signal(pid: int, ticks: int | None, sig: int) -> bool:
    """``sig`` to ``pid`` if it is still the process that had ``ticks``; whether it was."""
    if ticks is None or not ring_files.is_alive(pid, ticks):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
        return True
    return False


@dataclass
class Chaos:
    """What the fault thread did, for the checks and the report."""

    sender_kills: int = 0
    stops: int = 0
    killed_producers: set[int] = field(default_factory=set)
    stopped: list[tuple[int, int | None]] = field(default_factory=list)  # not continued yet
    errors: list[BaseException] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _run_faults(owner: Owner, scenario: Scenario, chaos: Chaos, began: float,
                stop: threading.Event) -> None:
    """Each fault at its moment (from ``began``); a stopped sender continued ``for_s`` later."""
    events: list[tuple[float, int, str, Any]] = []
    for n, (at_s, what, target, for_s) in enumerate(scenario.faults):
        events.append((at_s, n, what, (target, for_s)))
    try:
        while events:
            events.sort(key=lambda event: (event[0], event[1]))
            at_s, n, what, arg = events.pop(0)
            if stop.wait(max(0.0, began + at_s - time.monotonic())):
                return
            if what == "kill_producer":
                pid, ticks = owner.producers[arg[0]]
                if _signal(pid, ticks, signal.SIGKILL):
                    chaos.killed_producers.add(pid)
                continue
            if what == "cont":
                _signal(*arg, signal.SIGCONT)
                chaos.stopped.remove(arg)
                continue
            pid = _sender_of(owner, arg[0], stop)
            if pid is None:  # none came back: the restart failed, or the run ended
                chaos.skipped.append(f"{what} {arg[0]} at {at_s}")
            elif what == "kill_sender":
                chaos.sender_kills += _signal(pid, ring_files.process_start_ticks(pid),
                                              signal.SIGKILL)
            else:
                stopped = (pid, ring_files.process_start_ticks(pid))
                if _signal(*stopped, signal.SIGSTOP):
                    chaos.stops += 1
                    chaos.stopped.append(stopped)
                    events.append((at_s + arg[1], n, "cont", stopped))
    except BaseException as exc:  # surfaced by the test, with the scenario
        chaos.errors.append(exc)
    finally:
        for stopped in chaos.stopped:  # never leave one stopped
            _signal(*stopped, signal.SIGCONT)


def _sender_of(owner: Owner, shard: int, stop: threading.Event) -> int | None:
    """The live sender of ``shard``: if it is being restarted (after its pause: 1 s, then
    2, 4...), the one that comes next."""
    deadline = time.monotonic() + _RESTART_WAIT_S
    while (pid := owner.senders().get(shard)) is None and time.monotonic() < deadline:
        if stop.wait(0.02) or owner.proc.poll() is not None:
            return None
    return pid


def _run_outage(server: FaultServer, outage: tuple[float, float], began: float,
                stop: threading.Event, chaos: Chaos) -> None:
    try:
        if stop.wait(max(0.0, began + outage[0] - time.monotonic())):
            return
        server.down()
        try:
            stop.wait(outage[1])
        finally:
            server.up()
    except BaseException as exc:
        chaos.errors.append(exc)


# -- the run ----------------------------------------------------------------------------------

@dataclass
class Outcome:
    stats: dict[str, Any] | None  # close()'s, when the owner closed
    exitcodes: dict[int, int]  # the producers', when the owner closed
    alive_at_kill: set[int]  # the producers still running when the group was killed
    recovery: str  # what the recovery said


def _close(owner: Owner, scenario: Scenario, faults: threading.Thread, chaos: Chaos) -> Outcome:
    """The producers' end and the faults' (every stop continued), then close(), and the
    fault drawn for it."""
    exitcodes = {int(pid): code for pid, code in
                 json.loads(owner.line(_RUN_TIMEOUT_S))["exitcodes"].items()}
    faults.join(_RUN_TIMEOUT_S)
    assert not faults.is_alive(), "the faults did not end"
    owner.proc.stdin.write(b"close\n")
    owner.proc.stdin.flush()
    if scenario.at_close:
        what, shard, after_s, for_s = scenario.at_close
        time.sleep(after_s)
        pid = owner.senders().get(shard)
        sender = (pid, pid and ring_files.process_start_ticks(pid))
        if what == "kill_sender" and pid:
            chaos.sender_kills += _signal(*sender, signal.SIGKILL)
        elif pid and _signal(*sender, signal.SIGSTOP):
            chaos.stops += 1
            try:
                time.sleep(for_s)
            finally:
                _signal(*sender, signal.SIGCONT)
    stats = json.loads(owner.line(_CLOSE_TIMEOUT_S))
    assert owner.proc.wait(_CLOSE_TIMEOUT_S) == 0, owner.log()[-3000:]
    wait_gone(list(owner.senders().values()), _GONE_TIMEOUT_S)
    return Outcome(stats, exitcodes, set(), "")


def _kill(owner: Owner, scenario: Scenario, began: float, stop: threading.Event,
          faults: threading.Thread) -> set[int]:
    """SIGKILL of the owner's group and of its senders, at the moment drawn; the producers
    that still ran then."""
    assert scenario.kill is not None
    at_s, _, order = scenario.kill
    stop.wait(max(0.0, began + at_s - time.monotonic()))
    stop.set()
    faults.join(_RUN_TIMEOUT_S)
    alive = {pid for pid, ticks in owner.producers if ticks and ring_files.is_alive(pid, ticks)}

    def kill_senders() -> None:
        for pid in owner.senders().values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    if order == "senders first":  # the owner's restart waits its pause (1 s) first
        kill_senders()
    os.killpg(owner.proc.pid, signal.SIGKILL)
    owner.proc.wait(_GONE_TIMEOUT_S)
    wait_gone(owner.group(), _GONE_TIMEOUT_S)
    if order != "owner alone":  # else they drain on their own, for shutdown_timeout_s
        kill_senders()  # a sender started meanwhile, or one draining after its owner
    assert poll_until(lambda: not owner.senders(), _GONE_TIMEOUT_S)
    return alive


def _ring_set_gone(info: dict[str, Any]) -> bool:
    return not any(os.path.exists(path) for path in (
        ring_files.segment_path(info["ring"], info["ring_dir"]),
        ring_files.sidecar_path(info["ring"]), info["ring_dir"]))


def _recover(owner: Owner, how: str, url: str, work: Path) -> str:
    """The ring set the killed pipeline left, recovered by a new Engine for the same URL or
    by ``engine replay --to URL``; what the recovery said."""
    if how == "engine":
        eng = engine.Engine(url=url, project=PROJECT, dead_letter_path=str(work / "next.jsonl"),
                            shutdown_timeout_s=10.0)
        said = f"orphans_adopted {eng.stats()['orphans_adopted']}"
        eng.close()
    else:
        replayed = _replay(url, work)
        assert replayed.returncode == 0, replayed.stdout + replayed.stderr
        said = replayed.stdout
    assert poll_until(lambda: _ring_set_gone(owner.info), _GONE_TIMEOUT_S), (
        f"the ring set {owner.info['ring']} is still there after the recovery ({said})")
    return said


def _replay(url: str, work: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
    env.update(PYTHONPATH=str(ROOT), ENGINE_DEAD_LETTER_PATH=str(work / "dead_letters.jsonl"))
    return subprocess.run([sys.executable, "-m", "engine", "replay", "--to", url], env=env,
                          capture_output=True, text=True, timeout=_REPLAY_TIMEOUT_S,
                          cwd=str(ROOT))


def run_scenario(scenario: Scenario, work: Path) -> dict[str, Any]:
    """Run ``scenario`` and check it (see the module doc); what it did, in figures."""
    said = scenario.describe()
    chaos, stop = Chaos(), threading.Event()
    with FaultServer(**scenario.server) as server:
        owner = Owner(scenario, server.url, work)
        began = time.monotonic()
        threads = [threading.Thread(target=_run_faults, args=(owner, scenario, chaos, began, stop),
                                    daemon=True)]
        if scenario.outage:
            threads.append(threading.Thread(target=_run_outage, daemon=True, args=(
                server, scenario.outage, began, stop, chaos)))
        try:
            for thread in threads:
                thread.start()
            if scenario.kill is None:
                outcome = _close(owner, scenario, threads[0], chaos)
            else:
                alive = _kill(owner, scenario, began, stop, threads[0])
                stop.set()
                for thread in threads:
                    thread.join(_RUN_TIMEOUT_S)
                outcome = Outcome(None, {}, alive,
                                  _recover(owner, scenario.kill[1], server.url, work))
        finally:
            stop.set()
            for thread in threads:
                thread.join(_RUN_TIMEOUT_S)
            owner.stop()
        assert not chaos.errors, f"the faults failed: {chaos.errors[0]!r} ({said})"
        _check_producers(owner, outcome, chaos, said)
        _check_owner_log(owner, outcome, said)
        assert _ring_set_gone(owner.info), f"the ring set is left ({said})"
        dead_path = work / "dead_letters.jsonl"
        letters = list(read_dead_letters(dead_path)) if dead_path.exists() else []
        reasons = {letter.reason.split(":")[0] for letter in letters}
        assert reasons <= set(_PERSIST_REASONS), f"dead letters for {reasons} ({said})"
        if letters:
            server.p_503 = 0.0  # as a user replays: once the server answers again
            replayed = _replay(server.url, work)
            assert replayed.returncode == 0, f"{replayed.stdout}{replayed.stderr} ({said})"
        returned = _returned(work)
        assert returned, f"no call returned ({said})"
        stored = server.snapshot()
        _check_stored(returned, stored, said)
        duplicates = server.duplicate_deliveries()
    return dict(calls=len(returned), stored=len(stored), letters=len(letters),
                duplicates=duplicates, sender_kills=chaos.sender_kills, stops=chaos.stops,
                killed_producers=len(chaos.killed_producers), skipped=chaos.skipped,
                restarts=outcome.stats and outcome.stats.get("sender_restarts"),
                recovery=outcome.recovery.strip().splitlines()[-1:] if outcome.recovery else "")


def _returned(work: Path) -> dict[str, tuple[int, int]]:
    """call id -> (i, data bytes) of every call whose block or op returned."""
    returned = {}
    for path in (work / "ids").glob("*.ids"):
        for line in path.read_text().splitlines():
            call_id, i, data = line.split()
            returned[call_id] = (int(i), int(data))
    return returned


def _check_producers(owner: Owner, outcome: Outcome, chaos: Chaos, said: str) -> None:
    errors = {path.name: path.read_text() for path in (owner.work / "errors").glob("*.txt")}
    assert not errors, f"raised into a producer's code: {errors} ({said})"
    done = {int(path.name) for path in (owner.work / "done").iterdir()}
    for pid, _ in owner.producers:
        if pid in done:
            continue
        if outcome.stats is not None:  # closed: its exit code says how it died
            assert outcome.exitcodes[pid] == -signal.SIGKILL and pid in chaos.killed_producers, (
                f"producer {pid} exited {outcome.exitcodes[pid]} ({said})")
        else:
            assert pid in chaos.killed_producers or pid in outcome.alive_at_kill, (
                f"producer {pid} died before the group was killed, not by us ({said})")


def _check_owner_log(owner: Owner, outcome: Outcome, said: str) -> None:
    log = owner.log()
    assert "Traceback" not in log, f"{log[-4000:]} ({said})"
    if outcome.stats is not None:
        stats = outcome.stats
        assert stats["undelivered"] == 0, f"{stats['undelivered']} left in the rings ({said})"
        producers = stats["producers"]
        assert producers["dropped_full"] == producers["raised_full"] == 0, said


def _check_stored(returned: dict[str, tuple[int, int]], stored: dict, said: str) -> None:
    missing, wrong = [], []
    for call_id, (i, data) in returned.items():
        call = stored.get((PROJECT, call_id))
        if call is None or "started_at" not in call or "ended_at" not in call:
            missing.append(call_id)
        elif (call.get("inputs", {}).get("i") != i or len(call["inputs"].get("data", "")) != data
              or (call.get("output") or {}).get("i") != i or not call.get("op_name")):
            wrong.append(call_id)
    assert not missing, (f"{len(missing)} of {len(returned)} calls that returned are not "
                         f"stored whole, e.g. {missing[:3]} ({said})")
    assert not wrong, f"{len(wrong)} calls stored with other fields, e.g. {wrong[:3]} ({said})"


@pytest.mark.parametrize("seed", chaos_seeds("ENGINE_PROCESS_CHAOS_SEEDS", SEEDS), ids=lambda seed: f"seed-{seed}")
def test_every_call_that_returned_survives_killed_and_stopped_processes(tmp_path, seed):
    print(f"process chaos seed {seed}:", run_scenario(draw(seed), tmp_path))
