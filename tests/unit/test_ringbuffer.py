"""The fixed-capacity ring buffer: order, paging, loss accounting, clearing, no growth."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware.ringbuffer import RingBuffer, Slice

TINY = np.dtype([("seq", "u8"), ("t_wall", "f8")])
# The buffer is generic over structured dtypes; this one has array fields as well as scalars.
DET = np.dtype([("seq", "u8"), ("frame_id", "u8"), ("t_mono", "f8"), ("t_wall", "f8"), ("count", "u2"), ("capped", "?"),
                ("infer_ms", "f4"), ("boxes", "f4", (10, 4)), ("scores", "f4", (10,))])


def filled(capacity: int, n: int, dtype: np.dtype = TINY) -> RingBuffer:
    """A buffer with n records appended; record seq s has t_wall = 1000 + s."""
    rb = RingBuffer(dtype, capacity)
    for i in range(1, n + 1):
        assert rb.append(t_wall=1000.0 + i) == i
    return rb


def seqs(sl: Slice) -> list[int]:
    return [int(s) for s in sl.records["seq"]]


def drain(rb: RingBuffer, cursor: int, limit: int) -> tuple[list[int], int, int]:
    """Page through since() until `more` is false; return (seqs, total lost, final cursor)."""
    got: list[int] = []
    lost = 0
    for _ in range(10_000):
        sl = rb.since(cursor, limit)
        assert len(sl.records) <= limit
        got += seqs(sl)
        lost += sl.lost
        assert sl.cursor >= cursor
        cursor = sl.cursor
        if not sl.more:
            return got, lost, cursor
    raise AssertionError("since() never stopped reporting more")


# -- size and order -------------------------------------------------------------------------------


def test_empty_buffer() -> None:
    rb = RingBuffer(TINY, 8)
    assert len(rb) == 0
    assert rb.capacity == 8
    assert rb.dtype == TINY
    assert rb.newest_seq == 0
    assert rb.oldest_seq == 1
    sl = rb.since(0, 10)
    assert sl.records.dtype == TINY
    assert (len(sl.records), sl.cursor, sl.lost, sl.more) == (0, 0, 0, False)
    assert len(rb.between(0.0, 1e12, 10).records) == 0


def test_len_and_seq_before_the_buffer_fills() -> None:
    rb = filled(8, 5)
    assert len(rb) == 5
    assert (rb.oldest_seq, rb.newest_seq) == (1, 5)
    assert seqs(rb.since(0, 100)) == [1, 2, 3, 4, 5]


def test_capacity_is_respected_and_wrap_keeps_the_newest_in_order() -> None:
    rb = filled(8, 8)
    assert len(rb) == 8
    assert (rb.oldest_seq, rb.newest_seq) == (1, 8)
    rb.append(t_wall=1009.0)
    assert len(rb) == 8
    assert (rb.oldest_seq, rb.newest_seq) == (2, 9)
    for _ in range(30):
        rb.append(t_wall=1000.0 + rb.newest_seq + 1)
        assert len(rb) == 8
    assert (rb.oldest_seq, rb.newest_seq) == (32, 39)
    sl = rb.since(0, 100)
    assert seqs(sl) == list(range(32, 40))
    assert sl.records["t_wall"].tolist() == [1000.0 + s for s in range(32, 40)]


def test_capacity_one() -> None:
    rb = filled(1, 3)
    assert len(rb) == 1
    assert (rb.oldest_seq, rb.newest_seq) == (3, 3)
    sl = rb.since(0, 5)
    assert seqs(sl) == [3]
    assert sl.lost == 2


# -- since(): paging and loss ---------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 3, 7, 10, 100])
def test_paging_across_the_wrap_returns_each_record_once(limit: int) -> None:
    rb = filled(10, 27)  # slots wrapped twice; seq 18..27 held
    got, lost, cursor = drain(rb, 17, limit)
    assert got == list(range(18, 28))
    assert lost == 0
    assert cursor == 27
    assert rb.since(cursor, limit).records.size == 0


def test_since_more_flag_and_cursor() -> None:
    rb = filled(10, 10)
    sl = rb.since(0, 4)
    assert seqs(sl) == [1, 2, 3, 4]
    assert (sl.cursor, sl.lost, sl.more) == (4, 0, True)
    sl = rb.since(4, 6)
    assert seqs(sl) == [5, 6, 7, 8, 9, 10]
    assert (sl.cursor, sl.more) == (10, False)
    sl = rb.since(10, 6)  # caught up: nothing new, cursor stays
    assert (len(sl.records), sl.cursor, sl.lost, sl.more) == (0, 10, 0, False)


def test_since_reports_lost_when_the_cursor_fell_behind() -> None:
    rb = filled(10, 25)  # seq 1..15 overwritten, 16..25 held
    sl = rb.since(0, 100)
    assert seqs(sl) == list(range(16, 26))
    assert sl.lost == 15
    sl = rb.since(12, 4)
    assert seqs(sl) == [16, 17, 18, 19]
    assert sl.lost == 3  # 13, 14, 15
    assert (sl.cursor, sl.more) == (19, True)
    sl = rb.since(15, 100)  # exactly at the edge: nothing lost
    assert sl.lost == 0
    assert seqs(sl) == list(range(16, 26))


def test_lost_is_counted_once_while_paging() -> None:
    rb = filled(10, 25)
    got, lost, _ = drain(rb, 3, 3)
    assert got == list(range(16, 26))
    assert lost == 12  # 4..15, reported on the first page only


def test_cursor_beyond_newest() -> None:
    rb = filled(10, 5)
    sl = rb.since(50, 10)
    assert (len(sl.records), sl.cursor, sl.lost, sl.more) == (0, 50, 0, False)


def test_returned_records_are_copies() -> None:
    rb = filled(4, 4)
    sl = rb.since(0, 10)
    sl.records["t_wall"][:] = -1.0
    assert rb.since(0, 10).records["t_wall"].tolist() == [1001.0, 1002.0, 1003.0, 1004.0]
    assert not np.shares_memory(sl.records, rb._data)


# -- between() -------------------------------------------------------------------------------------


def test_between_selects_by_wall_clock_half_open() -> None:
    rb = filled(10, 25)  # held: seq 16..25, t_wall 1016..1025
    sl = rb.between(1018.0, 1022.0, 100)
    assert seqs(sl) == [18, 19, 20, 21]  # t1 excluded
    assert (sl.cursor, sl.lost, sl.more) == (21, 0, False)
    sl = rb.between(1018.0, 1022.0, 2)
    assert seqs(sl) == [18, 19]
    assert (sl.cursor, sl.more) == (19, True)
    sl = rb.between(0.0, 1017.5, 100)  # overwritten records are not found
    assert seqs(sl) == [16, 17]
    sl = rb.between(2000.0, 3000.0, 10)
    assert (len(sl.records), sl.cursor, sl.more) == (0, 0, False)
    assert len(rb.between(1022.0, 1018.0, 10).records) == 0


# -- clear() ---------------------------------------------------------------------------------------


def test_clear_zeroes_storage_and_sequence_keeps_counting() -> None:
    rb = RingBuffer(DET, 16)
    for i in range(1, 41):
        rb.append(t_wall=1000.0 + i, frame_id=i, count=2, boxes=np.full((10, 4), 0.25, np.float32))
    assert rb.clear() == 16
    assert len(rb) == 0
    assert (rb.oldest_seq, rb.newest_seq) == (41, 40)  # empty: oldest is one past newest, as when new
    raw = rb._data.view(np.uint8)
    assert raw.size == rb.nbytes
    assert not raw.any(), "clear() must zero the stored records, not just forget them"
    sl = rb.since(0, 100)
    assert len(sl.records) == 0
    assert sl.more is False
    assert sl.cursor == 40
    assert len(rb.since(30, 100).records) == 0
    assert len(rb.between(0.0, 1e12, 100).records) == 0
    assert rb.clear() == 0
    # New records continue the sequence; the cleared ones never come back.
    assert rb.append(t_wall=2000.0) == 41
    assert rb.append(t_wall=2001.0) == 42
    assert len(rb) == 2
    assert (rb.oldest_seq, rb.newest_seq) == (41, 42)
    sl = rb.since(0, 100)
    assert seqs(sl) == [41, 42]
    assert sl.lost == 40  # the cleared records count as gone for a client that never read them
    assert sl.records["frame_id"].tolist() == [0, 0]
    assert seqs(rb.since(40, 100)) == [41, 42]


def test_clear_of_a_partly_filled_buffer() -> None:
    rb = filled(10, 4)
    assert rb.clear() == 4
    assert not rb._data.view(np.uint8).any()
    rb.append(t_wall=5.0)
    got, _, cursor = drain(rb, 0, 2)
    assert got == [5]
    assert cursor == 5


# -- memory: preallocated, never grows ------------------------------------------------------------


def test_storage_is_preallocated_and_never_reallocated() -> None:
    cap = 64
    rb = RingBuffer(DET, cap)
    data = rb._data
    nbytes = rb.nbytes
    assert nbytes == cap * DET.itemsize
    assert data.nbytes == nbytes
    for i in range(10 * cap):
        rb.append(t_wall=float(i), frame_id=i, count=i % 10)
        assert rb._data is data
    rb.since(0, 1000)
    rb.between(0.0, 1e9, 1000)
    rb.clear()
    for i in range(cap):
        rb.append(t_wall=float(i))
    assert rb._data is data
    assert rb.nbytes == nbytes
    assert rb._data.nbytes == nbytes
    assert len(rb) == cap


# -- fields round-trip -----------------------------------------------------------------------------


def test_detection_fields_round_trip() -> None:
    rb = RingBuffer(DET, 4)
    rng = np.random.default_rng(7)
    written = []
    for i in range(6):
        n = i % 4
        boxes = np.zeros((10, 4), np.float32)
        boxes[:n] = rng.random((n, 4), dtype=np.float32)
        scores = np.zeros(10, np.float32)
        scores[:n] = rng.random(n, dtype=np.float32)
        rec = dict(
            frame_id=100 + i,
            t_mono=0.1 * i,
            t_wall=1e9 + i,
            count=n,
            capped=i == 5,
            infer_ms=12.5 + i,
            boxes=boxes,
            scores=scores,
        )
        written.append(rec)
        rb.append(**rec)
    sl = rb.since(0, 10)
    assert seqs(sl) == [3, 4, 5, 6]
    assert sl.lost == 2
    for got, want in zip(sl.records, written[2:], strict=True):
        assert int(got["frame_id"]) == want["frame_id"]
        assert float(got["t_mono"]) == pytest.approx(want["t_mono"])
        assert float(got["t_wall"]) == want["t_wall"]
        assert int(got["count"]) == want["count"]
        assert bool(got["capped"]) is want["capped"]
        assert float(got["infer_ms"]) == pytest.approx(want["infer_ms"])
        np.testing.assert_array_equal(got["boxes"], want["boxes"])
        np.testing.assert_array_equal(got["scores"], want["scores"])


def test_missing_fields_are_zero_even_in_a_reused_slot() -> None:
    rb = RingBuffer(DET, 2)
    rb.append(t_wall=1.0, frame_id=9, count=3, boxes=np.ones((10, 4), np.float32), scores=np.ones(10, np.float32))
    rb.append(t_wall=2.0)
    rb.append(t_wall=3.0)  # overwrites the slot of seq 1
    rec = rb.since(2, 1).records[0]
    assert int(rec["seq"]) == 3
    assert (int(rec["frame_id"]), int(rec["count"])) == (0, 0)
    assert not rec["boxes"].any()
    assert not rec["scores"].any()


def test_seq_is_assigned_by_the_buffer() -> None:
    rb = RingBuffer(TINY, 4)
    assert rb.append(seq=999, t_wall=1.0) == 1
    assert seqs(rb.since(0, 10)) == [1]


# -- invalid arguments -----------------------------------------------------------------------------


@pytest.mark.parametrize("capacity", [0, -1])
def test_bad_capacity(capacity: int) -> None:
    with pytest.raises(ValueError, match="capacity"):
        RingBuffer(TINY, capacity)


@pytest.mark.parametrize(
    "dtype",
    [
        pytest.param([("t_wall", "f8"), ("x", "i4")], id="no-seq"),
        pytest.param([("seq", "u8"), ("x", "i4")], id="no-t_wall"),
        pytest.param(np.dtype("f8"), id="not-structured"),
    ],
)
def test_dtype_without_seq_or_t_wall(dtype: object) -> None:
    with pytest.raises(ValueError, match="'seq' and 't_wall'"):
        RingBuffer(dtype, 4)  # type: ignore[arg-type]


@pytest.mark.parametrize(("cursor", "limit"), [(-1, 10), (0, 0), (5, -3)])
def test_bad_since_arguments(cursor: int, limit: int) -> None:
    rb = filled(4, 2)
    with pytest.raises(ValueError):
        rb.since(cursor, limit)


@pytest.mark.parametrize("limit", [0, -1])
def test_bad_between_limit(limit: int) -> None:
    with pytest.raises(ValueError):
        filled(4, 2).between(0.0, 1.0, limit)


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({"nosuch": 1}, id="unknown-field"),
        pytest.param({"frame_id": 7, "boxes": np.ones((3, 3), np.float32)}, id="wrong-shape"),
    ],
)
def test_failed_append_leaves_the_buffer_intact(bad: dict[str, object]) -> None:
    rb = RingBuffer(DET, 4)
    for i in range(1, 5):
        rb.append(t_wall=float(i), frame_id=i)
    before = rb._data.copy()
    with pytest.raises((ValueError, KeyError)):
        rb.append(t_wall=5.0, **bad)
    # The full buffer's oldest record (the slot the append would reuse) must survive a failed append.
    np.testing.assert_array_equal(rb._data, before)
    assert (len(rb), rb.newest_seq) == (4, 4)
    assert seqs(rb.since(0, 10)) == [1, 2, 3, 4]
    assert rb.append(t_wall=5.0) == 5
    assert seqs(rb.since(0, 10)) == [2, 3, 4, 5]


# -- property test against a plain list model -----------------------------------------------------

_ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(min_value=1, max_value=25)),
        st.tuples(st.just("since"), st.integers(min_value=0, max_value=80), st.integers(min_value=1, max_value=12)),
        st.tuples(st.just("clear")),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(capacity=st.integers(min_value=1, max_value=12), ops=_ops)
def test_matches_a_list_model(capacity: int, ops: list[tuple]) -> None:
    rb = RingBuffer(TINY, capacity)
    data = rb._data
    model: list[int] = []  # every seq ever appended and not cleared, oldest first
    next_seq = 1
    for op in ops:
        if op[0] == "append":
            for _ in range(op[1]):
                assert rb.append(t_wall=float(next_seq) / 2) == next_seq
                model.append(next_seq)
                next_seq += 1
        elif op[0] == "clear":
            held = model[-capacity:]
            assert rb.clear() == len(held)
            model.clear()
        else:
            _, cursor, limit = op
            held = model[-capacity:]
            after = [s for s in held if s > cursor]
            gone = [s for s in range(cursor + 1, next_seq) if s not in held]
            sl = rb.since(cursor, limit)
            assert seqs(sl) == after[:limit]
            assert sl.records["t_wall"].tolist() == [s / 2 for s in after[:limit]]
            assert sl.lost == len(gone)
            assert sl.more is (len(after) > limit)
            assert sl.cursor == (after[:limit][-1] if after else max(cursor, next_seq - 1))
        held = model[-capacity:]
        assert len(rb) == len(held)
        assert rb.newest_seq == next_seq - 1
        assert rb.oldest_seq == (held[0] if held else next_seq)
        assert rb._data is data
    # Paging from any cursor returns every held record exactly once, in order.
    held = model[-capacity:]
    got, lost, _ = drain(rb, 0, 3)
    assert got == held
    assert lost == next_seq - 1 - len(held)


def test_first_seq_from_is_where_a_look_back_purge_starts() -> None:
    rb = filled(8, 12)  # holds seqs 5..12, t_wall = 1000 + seq
    assert rb.first_seq_from(1009.5) == 10  # 10, 11, 12 are at or after it
    assert rb.purge_since(1009.5) == 3 and seqs(rb.since(0, 100)) == [5, 6, 7, 8, 9]
    assert rb.first_seq_from(1007.0) == 7  # the holes left by the purge do not count as older
    # nothing held is older: seqs 1-4 (overwritten) may have been made after t too
    assert rb.first_seq_from(1000.0) == 1
    assert rb.first_seq_from(2000.0) == 10  # nothing at or after it: one past the newest record held
    rb.clear()
    assert rb.first_seq_from(2000.0) == 1
