"""The memory this machine can give a new allocation: checked before an expander or a batch of
views is allocated, so that a setting too large for the machine fails with one line, not a kill
by the kernel's OOM killer."""

from __future__ import annotations


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation on this machine (Linux's MemAvailable); None
    where the kernel does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
