"""Peak growth of this process's resident set, for the CPU memory figures of the benchmarks (the
CPU has no allocator statistics; the process's lifetime maximum would be set by importing torch)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def peak_growth() -> Iterator[list[int]]:
    """Yields a one-element list that holds, on exit, the resident set's largest growth over its
    value on entry, sampled every millisecond."""
    base, peak, done = resident_bytes(), [0], threading.Event()
    grown = [0]

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], resident_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        yield grown
    finally:
        done.set()
        sampler.join()
        grown[0] = max(peak[0], resident_bytes()) - base
