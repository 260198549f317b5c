"""The few things MicroPython and CPython spell differently (the companion runs on both)."""

try:
    from time import ticks_add, ticks_diff, ticks_ms
except ImportError:  # CPython: quick unit tests of the same code
    import time as _time

    _PERIOD = 1 << 30  # MicroPython's ticks period
    _HALF = _PERIOD >> 1

    def ticks_ms():
        return int(_time.monotonic() * 1000) & (_PERIOD - 1)

    def ticks_diff(a, b):
        return ((a - b + _HALF) & (_PERIOD - 1)) - _HALF

    def ticks_add(a, delta):
        return (a + delta) & (_PERIOD - 1)


def equal(a, b):
    """Constant-time comparison of two byte strings (MicroPython's hmac has no compare_digest)."""
    if len(a) != len(b):
        return False
    d = 0
    for x, y in zip(a, b):
        d |= x ^ y
    return d == 0


__all__ = ["equal", "ticks_add", "ticks_diff", "ticks_ms"]
