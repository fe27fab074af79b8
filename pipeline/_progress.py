"""A small progress bar: blocks done/total, rate and ETA, on one terminal line."""

from __future__ import annotations

import sys
import time

__all__ = ["Progress", "format_seconds"]


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:d}:{minutes:02d}:{secs:02d}"


class Progress:
    """Prints ``[#####.....] 12/40 blocks (30%) 3.1 blocks/s, ETA 0:00:09``.

    **Arguments:**

    - `total`: blocks in the result; `done`: blocks complete before this run.
    - `enabled`: print nothing when False.
    - `stream`: where to print (standard error).
    """

    def __init__(self, total: int, done: int = 0, enabled: bool = True, stream=None,
                 width: int = 30, interval: float = 0.2):
        self.total, self.start_done, self.done = total, done, done
        self.enabled = enabled and total > 0
        self.stream = stream or sys.stderr
        self.width, self.interval = width, interval
        self.t0 = time.perf_counter()
        self._last = 0.0
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_decile = -1

    def update(self, done: int | None = None, force: bool = False):
        if done is not None:
            self.done = done
        else:
            self.done += 1
        now = time.perf_counter()
        if not self.enabled or (not force and now - self._last < self.interval
                                and self.done < self.total):
            return
        self._last = now
        if self._tty:
            self.stream.write("\r" + self.line(now))
        else:  # a log: one line per tenth, no carriage returns
            decile = int(10 * self.done / self.total)
            if decile == self._last_decile and not force:
                return
            self._last_decile = decile
            self.stream.write(self.line(now) + "\n")
        self.stream.flush()

    def line(self, now: float | None = None) -> str:
        now = time.perf_counter() if now is None else now
        elapsed = now - self.t0
        fraction = self.done / self.total if self.total else 1.0
        filled = int(round(self.width * fraction))
        bar = "#" * filled + "." * (self.width - filled)
        new = self.done - self.start_done
        rate = new / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta_text = format_seconds(eta) if eta == eta else "?"
        return (f"[{bar}] {self.done}/{self.total} blocks ({100 * fraction:.0f}%) "
                f"{rate:.2f} blocks/s, elapsed {format_seconds(elapsed)}, ETA {eta_text}")

    def close(self):
        if self.enabled and self._tty:
            self.update(self.done, force=True)
            self.stream.write("\n")
            self.stream.flush()
