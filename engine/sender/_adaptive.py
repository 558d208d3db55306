"""Learning the server (DESIGN decision 6): how many POSTs in flight, how large a body.

``AdaptiveConcurrency`` is AIMD in the style of Vector's adaptive request concurrency:
additive increase while latency holds and the limit was in use, multiplicative decrease on
overload (429/503/timeouts) or a latency spike against a smoothed baseline.

``SizeTarget`` learns the server's body limit from 413s: drop below the rejected size at
once, then probe back up slowly, never straight into a size that failed recently. Until a
first 413 it grows fast (doubling, as TCP's slow start): against a distant server the body
size times the requests in flight is what the link carries per round trip.
"""

from __future__ import annotations

import math

# A window's mean RTT counts as a spike only if it also exceeds the baseline by this
# fraction: on a quiet loopback the deviation is ~0 and scheduler noise would look like one.
_MIN_SPIKE_FRACTION = 0.2

# A success is evidence that the target works only if the body was near the target.
# Batches are cut when the next item would not fit, so full batches land just under it.
_PROBE_EVIDENCE_FRACTION = 0.75

# A known-failing size is forgotten after this many probe windows of successes, so a
# server whose limit was raised gets re-probed eventually (at the cost of one 413).
_CEILING_MEMORY_WINDOWS = 50

# Each failed probe doubles the successes needed before the next one, up to this many.
_MAX_PROBE_INTERVAL = 640

# Stop probing once the gap to the known-failing size is under 1/32 of the target (~3%):
# further probes would cost a rejected upload each for almost no gain.
_CONVERGED_GAP_DIVISOR = 32

# Before any 413: probe after this many successes near the target, by this factor.
_SLOW_START_PROBE_EVERY = 4
_SLOW_START_FACTOR = 2.0


class AdaptiveConcurrency:
    """The number of requests allowed in flight, adapted per window of responses.

    A window ends after ``limit`` responses, i.e. roughly one round trip at full use. At its
    end the limit grows by one if no response was overloaded, the window's mean RTT stayed
    within ``baseline + max(rtt_deviation_scale * stddev, 20% of baseline)``, and the limit
    was actually reached during the window (growing an unused limit proves nothing).
    An overloaded response cuts the limit at once, at most once per window, so a burst of
    429s from every in-flight request counts as one signal, not ``limit`` of them.
    """

    def __init__(
        self,
        initial: int = 2,
        minimum: int = 1,
        maximum: int = 16,
        decrease_ratio: float = 0.5,
        ewma_alpha: float = 0.4,
        rtt_deviation_scale: float = 2.5,
    ) -> None:
        _check(1 <= minimum <= initial <= maximum, "need 1 <= minimum <= initial <= maximum")
        _check(0 < decrease_ratio < 1, "decrease_ratio must be in (0, 1)")
        _check(0 < ewma_alpha <= 1, "ewma_alpha must be in (0, 1]")
        self.limit = initial
        self.minimum = minimum
        self.maximum = maximum
        self.decrease_ratio = decrease_ratio
        self.ewma_alpha = ewma_alpha
        self.rtt_deviation_scale = rtt_deviation_scale
        self.baseline_rtt_s: float | None = None
        self._rtt_variance = 0.0
        self._new_window()

    def on_response(self, rtt_s: float, *, overloaded: bool, in_flight: int | None = None) -> None:
        """Record one finished request.

        ``overloaded``: the server answered 429/503 or the request timed out.
        ``in_flight``: requests in flight when this one was sent, itself included; None
        means "at the limit" (a sender that always fills the limit need not count).
        """
        if overloaded:
            self._on_overload()
            return
        self._window_responses += 1
        self._window_rtt_sum_s += rtt_s
        self._reached_limit |= in_flight is None or in_flight >= self.limit
        if self._window_responses >= self.limit:
            self._close_window()

    def _on_overload(self) -> None:
        if not self._decreased_this_window:
            self._decrease()
            self._new_window()
            self._decreased_this_window = True

    def _close_window(self) -> None:
        mean_rtt_s = self._window_rtt_sum_s / self._window_responses
        if self._is_spike(mean_rtt_s):
            self._decrease()
        elif self._reached_limit and self.baseline_rtt_s is not None:
            self.limit = min(self.limit + 1, self.maximum)
        self._update_baseline(mean_rtt_s)
        self._new_window()

    def _is_spike(self, mean_rtt_s: float) -> bool:
        if self.baseline_rtt_s is None:
            return False
        allowed_s = max(
            self.rtt_deviation_scale * math.sqrt(self._rtt_variance),
            _MIN_SPIKE_FRACTION * self.baseline_rtt_s,
        )
        return mean_rtt_s > self.baseline_rtt_s + allowed_s

    def _update_baseline(self, mean_rtt_s: float) -> None:
        # Exponentially weighted mean and variance of window RTTs: a lasting change of
        # latency becomes the new normal instead of shrinking the limit forever.
        if self.baseline_rtt_s is None:
            self.baseline_rtt_s = mean_rtt_s
            return
        diff = mean_rtt_s - self.baseline_rtt_s
        self.baseline_rtt_s += self.ewma_alpha * diff
        self._rtt_variance = (1 - self.ewma_alpha) * (
            self._rtt_variance + self.ewma_alpha * diff * diff
        )

    def new_baseline(self) -> None:
        """Bodies changed size: their round trips are a new normal, not a spike (a body twice
        as large takes longer to compress, send and store). The next window measures it."""
        self.baseline_rtt_s = None
        self._rtt_variance = 0.0
        self._new_window()

    def _decrease(self) -> None:
        self.limit = max(self.minimum, math.floor(self.limit * self.decrease_ratio))

    def _new_window(self) -> None:
        self._window_responses = 0
        self._window_rtt_sum_s = 0.0
        self._reached_limit = False
        self._decreased_this_window = False


class SizeTarget:
    """The body size to aim for, learned from 413 answers.

    ``bytes`` starts at ``initial_bytes`` (default ``max_bytes``); batches get their size
    from :meth:`take`, which hands an armed probe to exactly one batch. Until the server
    first answers 413, a probe doubles the target after 4 successes near it. A 413 for ``rejected_bytes`` lowers it to half of that
    (or to the largest size the server recently accepted below it, when that is larger),
    never below ``min_bytes``, and records ``rejected_bytes`` as a known-failing ceiling.
    After ``probe_every`` successes near the target, it probes up by ``probe_factor`` but
    only to halfway toward the ceiling, bisecting the gap; each failed probe doubles the
    successes needed before the next one; the ceiling is forgotten after
    ``50 * probe_every`` successes so a raised server limit is found again.
    """

    def __init__(
        self,
        max_bytes: int,
        min_bytes: int = 64 << 10,
        probe_every: int = 20,
        probe_factor: float = 1.25,
        initial_bytes: int | None = None,
    ) -> None:
        _check(max_bytes > 0, "max_bytes must be positive")
        _check(probe_every >= 1, "probe_every must be >= 1")
        _check(probe_factor > 1, "probe_factor must be > 1")
        self.max_bytes = max_bytes
        self.min_bytes = min(min_bytes, max_bytes)
        self.probe_every = probe_every
        self.probe_factor = probe_factor
        self.bytes = max_bytes if initial_bytes is None else max(
            self.min_bytes, min(initial_bytes, max_bytes))
        self.ceiling_bytes: int | None = None  # smallest size rejected recently
        self._largest_ok_bytes = 0  # largest size accepted since the last 413
        self._successes_at_target = 0
        self._successes_since_413 = 0
        self._probe_interval = probe_every
        self._armed_bytes: int | None = None  # a probe size waiting for its batch
        self.probing_bytes: int | None = None  # the size of the one batch probing now
        self.rejected_once = False  # a 413 seen: probe carefully from then on
        # probes stop here: the sender keeps it at a share of the producers' rings, so that
        # several bodies fit in them at once (the rings free a body's records only once it
        # is acknowledged; a body as large as a ring would stop its producer for a round trip)
        self.cap_bytes = max_bytes

    def take(self) -> int:
        """The size target of the next batch to build: ``bytes``, except that one batch (and
        only one, however many requests are in flight) carries an armed probe."""
        armed = self._armed_bytes
        if armed is None:
            return self.bytes
        self._armed_bytes = None
        self.probing_bytes = armed
        return armed

    @property
    def armed_bytes(self) -> int | None:
        """The probe size the next batch :meth:`take` hands out, if one is armed."""
        return self._armed_bytes

    def on_413(self, rejected_bytes: int) -> None:
        """The server rejected a body of ``rejected_bytes`` as too large."""
        self.rejected_once = True
        if self._largest_ok_bytes >= rejected_bytes:
            self._largest_ok_bytes = 0  # the limit went down: old successes prove nothing
        elif self._largest_ok_bytes:
            # a failed probe above a size that works: probe less often (each costs an upload)
            self._probe_interval = min(self._probe_interval * 2, _MAX_PROBE_INTERVAL)
        self._armed_bytes = self.probing_bytes = None
        lowered = max(rejected_bytes // 2, self._largest_ok_bytes)
        self.bytes = max(self.min_bytes, min(self.bytes, lowered))
        if self.ceiling_bytes is None or rejected_bytes < self.ceiling_bytes:
            self.ceiling_bytes = rejected_bytes
        self._successes_at_target = 0
        self._successes_since_413 = 0

    def on_success(self, sent_bytes: int, target_bytes: int = 0) -> None:
        """The server accepted a body of ``sent_bytes``, from a batch cut at ``target_bytes``
        (0: a piece of a split batch)."""
        self._largest_ok_bytes = max(self._largest_ok_bytes, sent_bytes)
        if self.probing_bytes is not None and target_bytes == self.probing_bytes:
            if sent_bytes > self.bytes:
                self.bytes = self.probing_bytes  # the probe went through: its size is the target
                self.probing_bytes = None
            else:
                self.forget(target_bytes)  # cut short (linger, flush): it tested nothing
        self._successes_since_413 += 1
        if self._successes_since_413 >= _CEILING_MEMORY_WINDOWS * self.probe_every:
            self.ceiling_bytes = None
            self._probe_interval = self.probe_every
        if sent_bytes >= _PROBE_EVIDENCE_FRACTION * self.bytes:
            self._successes_at_target += 1
        interval = self._probe_interval if self.rejected_once else _SLOW_START_PROBE_EVERY
        if self._successes_at_target >= interval and self.probing_bytes is None:
            self._successes_at_target = 0
            probe = self._probe_size()
            self._armed_bytes = probe if probe > self.bytes else None

    def forget(self, target_bytes: int) -> None:
        """A batch cut at ``target_bytes`` did not test its size: it came out no larger than
        the target, or it will not be acknowledged whole (split, dead-lettered, spooled, read
        again). If it carried the probe, the next batch carries it instead: a probe that never
        concludes would stop the target from growing for good."""
        if self.probing_bytes is not None and target_bytes == self.probing_bytes:
            self._armed_bytes, self.probing_bytes = self.probing_bytes, None

    def _probe_size(self) -> int:
        factor = self.probe_factor if self.rejected_once else _SLOW_START_FACTOR
        grown = min(self.max_bytes, self.cap_bytes, math.floor(self.bytes * factor))
        if self.ceiling_bytes is None:
            return grown
        halfway = (self.bytes + self.ceiling_bytes) // 2
        if halfway - self.bytes < self.bytes // _CONVERGED_GAP_DIVISOR:
            return self.bytes
        return min(grown, halfway)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)
