"""``gc_paused()``: the opt-in pause of the cyclic garbage collector (``AsyncConsumer(pause_gc=True)``).

A ``Record``, like any tuple subclass, stays tracked by CPython's cyclic collector for
its whole life, so building a batch of thousands (``getmany()``) sets off a young
collection every 700 of them and moves them all towards the oldest generation, whose
full collections then cost more CPU than the records themselves (``client/_records.c``
avoids that where it was compiled; decoding a frame still makes a tuple per record).
The collector is process-wide state that belongs to the application, so the client
pauses it only when asked to.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

import msgpack
import msgpack.fallback

__all__ = ["gc_paused"]

# The pauses the consumer makes span C calls (msgpack's C extension, C iterators) and
# a few bytecodes between them, so another thread seldom runs, and never for long,
# while the collector is off. With the pure-Python msgpack they would span Python
# code, so there is no pause then.
_C_ONLY = msgpack.unpackb is not msgpack.fallback.unpackb


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic GC for the block, if it is enabled (and msgpack is the C one).

    Objects made and freed within the pause cost the collector nothing, and those kept
    cost one young collection afterwards instead of one every 700 allocations.
    """
    if not (_C_ONLY and gc.isenabled()):
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
