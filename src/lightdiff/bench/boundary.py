"""The OOM boundary search: the largest candidate that fits, with few probes.

Memory grows with batch and size, so "fits" is monotone over a sorted candidate list. The search
gallops up from a start index (1, 2, 4, 8 ... places up; probes that fit are cheap next to probes
that fail late) and then bisects between the last fit and the first failure. Written by hand: it
is a dozen lines, and no library searches a monotone predicate with a caller-chosen start.
"""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar

T = TypeVar("T")


def largest_fitting(candidates: Sequence[T], start: int, fits: Callable[[T], bool]) -> T | None:
    """The largest candidate with fits(c) true, assuming fits is true up to some point and false after.

    None when even candidates[0] does not fit. Probes each candidate at most once."""
    if not candidates:
        return None
    start = min(max(start, 0), len(candidates) - 1)
    if not fits(candidates[start]):
        lo, hi = -1, start  # lo fits (or -1: none known), hi fails
    else:
        lo, step = start, 1
        while True:
            nxt = lo + step
            if nxt >= len(candidates):
                if lo == len(candidates) - 1 or fits(candidates[-1]):
                    return candidates[-1]
                hi = len(candidates) - 1
                break
            if not fits(candidates[nxt]):
                hi = nxt
                break
            lo, step = nxt, step * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(candidates[mid]):
            lo = mid
        else:
            hi = mid
    return candidates[lo] if lo >= 0 else None
