"""``engine ingest``'s progress bar: one line on stderr (rate, ETA) when it is a terminal."""

from __future__ import annotations

import sys
import time


class Progress:
    """A one-line progress bar on stderr (rate, ETA) when it is a terminal."""

    def __init__(self, total_bytes: int | None, done_bytes: int, enabled: bool) -> None:
        self.total_bytes = total_bytes
        self.done_bytes = done_bytes
        self.enabled = enabled
        self.items = 0
        self._start_s = time.monotonic()
        self._start_bytes = done_bytes
        self._shown_s = 0.0

    def add(self, items: int, read_bytes: int) -> None:
        self.items += items
        self.done_bytes += read_bytes
        now = time.monotonic()
        if self.enabled and now - self._shown_s >= 0.2:
            self._shown_s = now
            sys.stderr.write("\r" + self.line(now) + "\x1b[K")
            sys.stderr.flush()

    def line(self, now: float) -> str:
        elapsed_s = max(1e-9, now - self._start_s)
        rate = self.items / elapsed_s
        text = f"{self.items:,} items  {rate:,.0f}/s"
        if self.total_bytes:
            fraction = min(1.0, self.done_bytes / self.total_bytes)
            bar = "#" * int(fraction * 30)
            byte_rate = (self.done_bytes - self._start_bytes) / elapsed_s
            eta_s = (self.total_bytes - self.done_bytes) / byte_rate if byte_rate > 0 else 0
            text = f"[{bar:<30}] {fraction:6.1%}  {text}  ETA {int(eta_s) // 60}:{int(eta_s) % 60:02d}"
        return text

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + self.line(time.monotonic()) + "\x1b[K\n")
