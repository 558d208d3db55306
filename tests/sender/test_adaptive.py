import random

import pytest

from engine.sender._adaptive import AdaptiveConcurrency, SizeTarget


def run_windows(arc: AdaptiveConcurrency, windows: int, rtt_s: float, **kwargs) -> None:
    for _ in range(windows):
        for _ in range(arc.limit):
            arc.on_response(rtt_s, overloaded=False, **kwargs)


def test_concurrency_grows_by_one_per_window_while_latency_holds():
    arc = AdaptiveConcurrency(initial=2, maximum=16)
    run_windows(arc, 1, 0.010)  # the first window only sets the baseline
    assert arc.limit == 2
    seen = []
    for _ in range(5):
        run_windows(arc, 1, 0.010)
        seen.append(arc.limit)
    assert seen == [3, 4, 5, 6, 7]


def test_concurrency_never_exceeds_maximum():
    arc = AdaptiveConcurrency(initial=2, maximum=5)
    run_windows(arc, 50, 0.010)
    assert arc.limit == 5


def test_concurrency_tolerates_seeded_latency_noise():
    rng = random.Random(11)
    arc = AdaptiveConcurrency(initial=2, maximum=12)
    for _ in range(400):
        arc.on_response(0.010 * (1 + 0.1 * rng.random()), overloaded=False)
    assert arc.limit == 12


def test_concurrency_does_not_grow_when_the_limit_was_not_used():
    arc = AdaptiveConcurrency(initial=4)
    run_windows(arc, 20, 0.010, in_flight=1)
    assert arc.limit == 4


def test_overload_halves_the_limit_once_per_window():
    arc = AdaptiveConcurrency(initial=8, maximum=16)
    for _ in range(8):  # every in-flight request comes back 429 together
        arc.on_response(0.010, overloaded=True)
    assert arc.limit == 4


def test_overload_in_a_later_window_halves_again_down_to_minimum():
    arc = AdaptiveConcurrency(initial=8, minimum=2)
    for _ in range(4):
        run_windows(arc, 1, 0.010)
        arc.on_response(0.010, overloaded=True)
    assert arc.limit == 2


def test_latency_spike_decreases_the_limit():
    arc = AdaptiveConcurrency(initial=4, maximum=16)
    run_windows(arc, 10, 0.010)
    before = arc.limit
    run_windows(arc, 1, 0.050)
    assert arc.limit == before // 2


def test_small_latency_wobble_is_not_a_spike():
    arc = AdaptiveConcurrency(initial=4, maximum=64)
    run_windows(arc, 3, 0.010)
    before = arc.limit
    run_windows(arc, 1, 0.011)
    assert arc.limit == before + 1


def test_lasting_latency_rise_becomes_the_new_baseline():
    arc = AdaptiveConcurrency(initial=8, maximum=64)
    run_windows(arc, 5, 0.010)
    run_windows(arc, 30, 0.040)
    grown_from = arc.limit
    run_windows(arc, 1, 0.040)
    assert arc.limit == grown_from + 1


@pytest.mark.parametrize(
    "kwargs",
    [{"initial": 0}, {"minimum": 3, "initial": 2}, {"initial": 20}, {"decrease_ratio": 1.0}],
)
def test_concurrency_rejects_nonsense_settings(kwargs):
    with pytest.raises(ValueError):
        AdaptiveConcurrency(**kwargs)


MIB = 1 << 20


def test_size_target_starts_at_max():
    assert SizeTarget(32 * MIB).bytes == 32 * MIB


def test_413_halves_the_target_but_never_below_min():
    target = SizeTarget(32 * MIB, min_bytes=64 << 10)
    target.on_413(32 * MIB)
    assert target.bytes == 16 * MIB
    target.on_413(100 << 10)
    assert target.bytes == 64 << 10


def test_413_of_a_larger_body_does_not_raise_the_target():
    target = SizeTarget(32 * MIB)
    target.on_413(2 * MIB)
    target.on_413(16 * MIB)
    assert target.bytes == 1 * MIB


def test_413_falls_back_to_the_largest_recently_accepted_size():
    target = SizeTarget(32 * MIB, probe_every=1)
    target.on_413(2 * MIB)
    target.on_success(1 * MIB)
    probe = target.take()
    assert 1 * MIB < probe < 2 * MIB
    target.on_413(probe)
    assert target.bytes == 1 * MIB


def test_size_target_probes_up_slowly_after_successes():
    target = SizeTarget(32 * MIB, probe_every=20, probe_factor=1.25)
    target.on_413(32 * MIB)
    start = target.bytes
    for _ in range(19):
        target.on_success(start)
    assert target.take() == start
    target.on_success(start)
    probe = target.take()
    assert probe == int(start * 1.25)
    assert target.take() == start  # one batch probes, however many are in flight
    target.on_success(probe, probe)
    assert target.bytes == probe


def succeed_until_a_probe(target: SizeTarget) -> int:
    """Full batches succeed until one is handed a probe; returns the probe's size."""
    for _ in range(1000):
        size = target.take()
        if size > target.bytes:
            return size
        target.on_success(size, size)
    raise AssertionError("no probe after 1000 full batches")


def test_until_a_first_413_the_target_doubles_every_few_successes_then_grows_carefully():
    target = SizeTarget(32 * MIB, initial_bytes=1 * MIB)
    sizes = []
    while target.bytes < 32 * MIB and len(sizes) < 100:
        size = target.take()
        target.on_success(size, size)
        sizes.append(size)
    assert target.bytes == 32 * MIB
    assert len(sizes) <= 30  # 1 → 32 MiB: 5 doublings, each after 4 full bodies
    assert sorted(set(sizes)) == [1 * MIB, 2 * MIB, 4 * MIB, 8 * MIB, 16 * MIB, 32 * MIB]
    target.on_413(32 * MIB)  # then the server's limit shows: careful from here on
    assert target.bytes == 16 * MIB
    probe = succeed_until_a_probe(target)
    assert probe <= 16 * MIB * 1.25


def test_a_probe_batch_cut_short_hands_the_probe_to_the_next_batch():
    # A probe batch closed by the linger timer or a flush below the target tested nothing;
    # it used to keep the probe for ever, and the target never grew again (a sender against
    # a server 300 ms away stayed at its 2 MiB start for 100k calls).
    target = SizeTarget(32 * MIB, initial_bytes=2 * MIB)
    probe = succeed_until_a_probe(target)
    target.on_success(MIB, probe)  # the probe batch left at 1 MiB
    assert target.bytes == 2 * MIB
    assert target.take() == probe  # the next batch probes
    target.on_success(probe, probe)
    assert target.bytes == probe


def test_a_probe_batch_that_is_not_acknowledged_whole_hands_the_probe_on():
    target = SizeTarget(32 * MIB, initial_bytes=2 * MIB)
    probe = succeed_until_a_probe(target)
    target.on_success(2 * MIB, 2 * MIB)  # other batches settle meanwhile
    target.forget(probe)  # what Delivery does on a 422 split, a dead letter, a mode switch
    assert target.take() == probe


def test_a_lone_large_call_in_an_ordinary_batch_does_not_conclude_the_probe():
    target = SizeTarget(32 * MIB, initial_bytes=2 * MIB)
    probe = succeed_until_a_probe(target)
    target.on_success(5 * MIB, 2 * MIB)  # one 5 MiB call, alone in a batch cut at 2 MiB
    assert target.bytes == 2 * MIB
    assert target.probing_bytes == probe


def test_small_batches_are_no_evidence_for_probing():
    target = SizeTarget(32 * MIB, probe_every=5)
    target.on_413(8 * MIB)
    for _ in range(100):
        target.on_success(100)
    assert target.bytes == 4 * MIB


def test_a_failed_probe_makes_the_next_probe_wait_longer():
    target = SizeTarget(32 * MIB, probe_every=2)
    target.on_413(2 * MIB)
    intervals = []
    for _ in range(3):
        successes = 0
        while (size := target.take()) <= target.bytes:
            target.on_success(size)
            successes += 1
        intervals.append(successes)
        target.on_413(size)
    assert intervals[0] < intervals[1] < intervals[2]


def test_size_target_never_probes_into_a_recently_failing_size():
    target = SizeTarget(32 * MIB, probe_every=2)
    target.on_413(1 * MIB)
    for _ in range(99):  # the ceiling is remembered for 50 probe windows of successes
        size = target.take()
        assert size < 1 * MIB
        target.on_success(size)


def feed_until_converged(target: SizeTarget, limit_bytes: int, batches: int) -> tuple[int, int]:
    """Simulate a server with a hard limit; return (rejected bytes, accepted bytes)."""
    rejected = accepted = 0
    for _ in range(batches):
        size = target.take()
        if size > limit_bytes:
            rejected += size
            target.on_413(size)
        else:
            accepted += size
            target.on_success(size, size)
    return rejected, accepted


def test_size_target_converges_close_under_a_hard_limit_with_few_rejections():
    target = SizeTarget(32 * MIB)
    feed_until_converged(target, MIB, 2_000)  # learn
    rejected, accepted = feed_until_converged(target, MIB, 5_000)  # steady state
    assert 0.9 * MIB < target.bytes <= MIB
    assert rejected <= 0.05 * accepted


def test_known_failing_size_is_forgotten_eventually_so_a_raised_limit_is_found():
    target = SizeTarget(32 * MIB, probe_every=2)
    feed_until_converged(target, MIB, 300)
    assert target.bytes <= MIB
    feed_until_converged(target, 4 * MIB, 2_000)
    assert target.bytes > 2 * MIB


def test_the_target_grows_no_further_than_its_cap():
    # the sender caps it at the producers' rings / max_in_flight: a body as large as a ring
    # would hold its producer up for a whole round trip
    target = SizeTarget(32 * MIB, initial_bytes=1 * MIB)
    target.cap_bytes = 4 * MIB
    for _ in range(200):
        size = target.take()
        target.on_success(size, size)
    assert target.bytes == 4 * MIB
