"""Fixed-capacity, preallocated record store.

Records live in one numpy structured array allocated at start; appending overwrites the oldest
record once the buffer is full, so memory never grows. Every record gets a sequence number
(``seq``, starting at 1, never reused) that clients use as a cursor: ``since(cursor)`` returns the
records after it and says how many were overwritten before the client could read them.

All methods are meant to be called from one thread (the event loop); nothing here locks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class Slice:
    """Records returned by a query, in ascending ``seq`` order."""

    records: np.ndarray
    cursor: int  # pass back as ``since`` to continue after these records
    lost: int  # records after the requested cursor that were already overwritten
    more: bool  # further records are available beyond ``limit``


class RingBuffer:
    def __init__(self, dtype: np.dtype[Any] | list[tuple[Any, ...]], capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        dt = np.dtype(dtype)
        names = dt.names or ()
        if "seq" not in names or "t_wall" not in names:
            raise ValueError("record dtype needs 'seq' and 't_wall' fields")
        self._data = np.zeros(capacity, dtype=dt)
        self._zero = np.zeros((), dtype=dt)
        self._scratch = np.zeros((), dtype=dt)
        self._capacity = capacity
        self._next_seq = 1
        self._first_kept = 1  # raised by clear(): records before it are gone even if in range

    # -- size -------------------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def dtype(self) -> np.dtype[Any]:
        return self._data.dtype

    @property
    def nbytes(self) -> int:
        return int(self._data.nbytes)

    def __len__(self) -> int:
        # every slot outside the held range is zero (never written, cleared, expired or purged)
        return int(np.count_nonzero(self._data["seq"]))

    @property
    def oldest_seq(self) -> int:
        """Sequence number of the oldest record held (``newest_seq + 1`` when empty, also after clear())."""
        return max(1, self._next_seq - self._capacity, self._first_kept)

    @property
    def newest_seq(self) -> int:
        return self._next_seq - 1

    # -- writes -----------------------------------------------------------------------------
    def append(self, **fields: Any) -> int:
        """Store one record (missing fields are zero) and return its sequence number."""
        seq = self._next_seq
        # Build the record aside and store it in one copy: a bad field raises before the slot (the
        # oldest record once full) is touched, instead of leaving it zeroed or half-written.
        rec = self._scratch
        rec[...] = self._zero
        for name, value in fields.items():
            rec[name] = value
        rec["seq"] = seq
        self._data[seq % self._capacity] = rec
        self._next_seq = seq + 1
        return seq

    def clear(self) -> int:
        """Zero every record (not just forget them); return how many were held."""
        n = len(self)
        self._data[...] = 0
        # Sequence numbers keep counting so cursors held by clients stay meaningful.
        self._first_kept = self._next_seq
        return n

    def expire(self, before: float, field: str = "t_wall") -> int:
        """Zero and forget the oldest records whose ``field`` (a time) is before ``before`` (retention).

        Records are appended in time order (use a monotonic ``field``: a wall clock can jump), so
        the expired ones are a prefix; stops at the first record that is new enough. Returns how
        many were dropped."""
        first, last = self.oldest_seq, self.newest_seq
        if last < first:
            return 0
        idx = np.arange(first, last + 1, dtype=np.int64) % self._capacity
        t = self._data[field][idx]
        keep = np.flatnonzero(t >= before)
        n = len(idx) if not len(keep) else int(keep[0])
        if n:
            self._data[idx[:n]] = self._zero
            self._first_kept = first + n
        return n

    def purge_since(self, t: float, field: str = "t_wall") -> int:
        """Zero every record whose ``field`` is at or after ``t`` (an opt-out's look-back).

        The purged records become holes: reads skip them, sequence numbers keep counting."""
        first, last = self.oldest_seq, self.newest_seq
        if last < first:
            return 0
        idx = np.arange(first, last + 1, dtype=np.int64) % self._capacity
        hit = idx[(self._data[field][idx] >= t) & (self._data["seq"][idx] != 0)]
        self._data[hit] = self._zero
        return len(hit)

    def first_seq_from(self, t: float, field: str = "t_wall") -> int:
        """The sequence number from which on every record's ``field`` is at or after ``t``: one past
        the newest held record made before ``t`` (records are appended in time order). 1 when no
        held record is older: the ones already expired or overwritten may have been made after t."""
        first, last = self.oldest_seq, self.newest_seq
        if last < first:
            return 1
        idx = np.arange(first, last + 1, dtype=np.int64) % self._capacity
        rec = self._data[idx]
        older = np.flatnonzero((rec[field] < t) & (rec["seq"] != 0))
        return int(rec["seq"][older[-1]]) + 1 if len(older) else 1

    # -- reads ------------------------------------------------------------------------------
    def _take(self, first: int, last: int) -> np.ndarray:
        """Copy records first..last (inclusive sequence numbers)."""
        if last < first:
            return self._data[:0].copy()
        idx = np.arange(first, last + 1, dtype=np.int64) % self._capacity
        recs = self._data[idx]  # fancy indexing copies
        return recs[recs["seq"] != 0]  # holes left by purge_since

    def since(self, cursor: int, limit: int, where: Callable[[np.ndarray], np.ndarray] | None = None) -> Slice:
        """Records with ``seq > cursor``, at most ``limit`` of them, oldest first.

        ``where`` (records -> boolean mask) keeps only matching records; the returned cursor then
        skips past the non-matching ones too, so paging never re-reads them."""
        if cursor < 0 or limit < 1:
            raise ValueError("cursor must be >= 0 and limit >= 1")
        first_valid = self.oldest_seq
        first = max(cursor + 1, first_valid)
        lost = max(0, min(first_valid, self._next_seq) - (cursor + 1))
        if where is None:
            last = min(self.newest_seq, first + limit - 1)
            return Slice(self._take(first, last), cursor=max(cursor, last), lost=lost, more=last < self.newest_seq)
        recs = self._take(first, self.newest_seq)
        recs = recs[where(recs)]
        if len(recs) > limit:
            recs = recs[:limit]
            return Slice(recs, cursor=int(recs["seq"][-1]), lost=lost, more=True)
        return Slice(recs, cursor=max(cursor, self.newest_seq), lost=lost, more=False)

    def between(self, t0: float, t1: float, limit: int, field: str = "t_wall") -> Slice:
        """Records with ``t0 <= field < t1``, at most ``limit``, oldest first."""
        if limit < 1:
            raise ValueError("limit must be >= 1")
        recs = self._take(self.oldest_seq, self.newest_seq)
        t = recs[field]
        sel = recs[(t >= t0) & (t < t1)]
        more = len(sel) > limit
        sel = sel[:limit]
        cursor = int(sel["seq"][-1]) if len(sel) else 0
        return Slice(sel, cursor=cursor, lost=0, more=more)
