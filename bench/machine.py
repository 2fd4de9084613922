"""What this machine charges for the memory every benchmark touches, measured in the run that uses it.

This VM's balloon reports freed pages back to the host (virtio_balloon with free page reporting), so a
page the guest touches for the first time since it was freed is also a fault on the host: 2-15 us of
kernel time per 4 KiB page here, moving several-fold within minutes. Every tool's page-cache writes, a
new process's heap and a forked child's copy-on-write pay it alike, so the benches record it next to
their figures.
"""

from __future__ import annotations

import mmap
import resource
import statistics
import time

MIB = 1024 * 1024


def fresh_page_cost(mib: int = 512, runs: int = 3) -> float:
    """Median kernel microseconds to fault in one fresh 4 KiB page of anonymous memory.

    Every tool writes the release into the page cache, one fresh page per 4 KiB, and loopback TCP takes
    more for socket buffers. On a VM whose balloon reports free pages back to the host (this machine:
    virtio_balloon with free page reporting), each such page is a host fault too, so this figure (and
    how much it moves during a run) bounds the large cases for every tool alike.
    """
    costs = []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_stime
        with mmap.mmap(-1, mib * MIB) as m:
            for off in range(0, mib * MIB, mmap.PAGESIZE):
                m[off] = 1
        costs.append((resource.getrusage(resource.RUSAGE_SELF).ru_stime - before) / (mib * MIB / mmap.PAGESIZE) * 1e6)
        time.sleep(2)  # long enough for freed pages to be reported again (page_reporting's delay)
    return round(statistics.median(costs), 2)
