"""The collector's settings for a long run: what is loaded is frozen, the young generation wider.

`smsbot serve` calls settle_heap once its flows are loaded, and so does `smsbot start` (and each
of its start processes): their work is many small batches of short-lived objects.
"""

from __future__ import annotations

import gc

# The collector's young generation, in allocations (CPython's default is 700). At 700 a
# collection starts every few hundred objects, so whatever a step batch or a page of timers
# holds across an await is collected twice and promoted to the oldest generation, where it
# soon dies by reference count; the promotions alone set off full collections, which walk
# every object the process keeps. Measured on 100,000 fired reminders (bench/README.md): 49
# full collections, 2.4 s with the GIL held, 135 objects freed; at 10,000, 2 of them and
# 0.45 s of collection in all, against 3.4 s. The cost: up to this many objects of cyclic
# garbage wait a little longer (about a megabyte).
YOUNG_GENERATION = 10_000


def settle_heap() -> None:
    """Freeze what is loaded by now and widen the collector's young generation (see above)."""
    # What is loaded by now (modules, flows, templates) lives as long as the process: moved
    # out of the collector's sight, a full collection no longer walks it again and again.
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION, middle, old)
