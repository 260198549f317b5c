"""Opt-out companions: the sign's button away from the board, and how the board checks them.

A companion (``companion/``: MicroPython on a Raspberry Pi Pico W with a button and an LED by
the privacy sign) sends its presses straight to every camera board it is paired with, as
``POST /v1/optout`` with::

    Authorization: Cuecam-Companion door-1:<hex HMAC-SHA256>
    {"v":1,"companion":"door-1","board":"cam-plaza","action":"optout","ts":1732550400,"ctr":1093,"press":1092,"age_ms":40}

The HMAC is over ``SIGN_PREFIX`` + the body's exact bytes, with the companion's own 256-bit key
(``cuecam provision --companion NAME``; the board lists it under ``privacy.optout.companions``).
A request is accepted only when, in this order:

1. the companion is listed in the board's config (else ``unknown_companion``);
2. the HMAC is right (``bad_signature``) and the body is the object above (``malformed``),
   addressed to this board (``wrong_board``);
3. its counter ``ctr`` is higher than every counter this board accepted from that companion
   (``replay``). The companion never signs two requests with one counter, and keeps its counter
   in flash across resets (it reserves blocks of counters, so a reset skips ahead, never back);
   the board keeps the highest counter per companion and key in a small state file beside the
   audit log, so a replay stays refused across board restarts too;
4. its timestamp ``ts`` is within ``privacy.optout.companion_window_s`` (default 90 s) of the
   board's clock (``stale``). A Pico W has no battery clock and need not reach NTP: it reads the
   board's clock off the ``Date`` header and the ``time`` field of the board's answers and counts
   on from there with its monotonic ticks, so its drift is that of its crystal since the last
   answer (tens of ppm: well under a second a day). Every attempt is signed afresh, so a retry
   is never stale; a request held back by someone on the network is, after the window;
5. the press is still within the pause period: ``age_ms`` (press to signing, on the companion's
   monotonic clock) below ``pause_s`` (``expired``), and a ``resume`` (a long press) only where
   the board's own button resumes on a long press (``resume_not_allowed``).

Refusals and acceptances are both written to the audit log (event ``refused`` / ``optout`` /
``resume``, source ``companion``). The key grants nothing else: the bearer token is still
needed for every other route, and a companion request on any other route is a 401.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..errors import AuthError
from ..fsutil import atomic_write_bytes
from .audit import COMPANION_NAME, REASONS

log = logging.getLogger(__name__)

SCHEME = "Cuecam-Companion"
SIGN_PREFIX = b"cuecam-companion-v1\nPOST /v1/optout\n"
MAX_BODY = 1024
ACTIONS = ("optout", "resume")
KEY_BYTES = 32
MAX_COUNTER = 2**53  # JSON-safe integers
STATE_SCHEMA = 1
STATE_FILE = "companions.json"  # beside the audit log (/var/lib/cuecam on a board)
_SIG = re.compile(r"^[0-9a-f]{64}$")
_FIELDS = {"v", "companion", "board", "action", "ts", "ctr", "press", "age_ms"}


class Refused(Exception):
    """A companion request the board will not act on; ``reason`` is one of audit.REASONS."""

    def __init__(self, reason: str, message: str, companion: str | None = None, ctr: int | None = None) -> None:
        assert reason in REASONS, reason
        super().__init__(message)
        self.reason = reason
        self.companion = companion
        self.ctr = ctr  # the counter of a request whose signature was right (its refusal is signed back)


@dataclass(frozen=True)
class Companion:
    name: str
    key: bytes = field(repr=False)
    position: str | None = None

    @property
    def key_id(self) -> str:
        """A short fingerprint of the key (not the key): a re-provisioned companion is a new one."""
        return hashlib.sha256(b"cuecam-companion-key-id\n" + self.key).hexdigest()[:16]


@dataclass(frozen=True)
class Accepted:
    companion: str
    action: str
    ts: int
    ctr: int
    press: int
    age_s: float


def sign(key: bytes, body: bytes) -> str:
    """The hex HMAC-SHA256 a companion puts in its Authorization header (the same as companion/)."""
    return hmac.new(key, SIGN_PREFIX + body, hashlib.sha256).hexdigest()


def authorization(name: str, key: bytes, body: bytes) -> str:
    return f"{SCHEME} {name}:{sign(key, body)}"


def is_companion_auth(header: str) -> bool:
    return header[: len(SCHEME) + 1].lower() == SCHEME.lower() + " "


def parse_key(text: str, where: str) -> bytes:
    """A companion key file holds 64 hex characters (256 bits), as `cuecam provision` writes it."""
    value = text.strip()
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise AuthError(f"the companion key {where} must be 64 hex characters (256 bits); "
                        "make one with `cuecam provision --companion NAME`")
    return bytes.fromhex(value)


def load_companions(entries: Iterable[Any], resolve: Callable[[str], Path]) -> list[Companion]:
    """The companions of ``privacy.optout.companions`` with their keys; AuthError names the file."""
    out = []
    for c in entries:
        path = resolve(c.key_file)
        try:
            text = path.read_bytes()[:1024].decode("ascii")
        except FileNotFoundError:
            raise AuthError(f"companion {c.name}: no key file {path}; copy the companion-key that "
                            f"`cuecam provision --companion {c.name}` made there (mode 0600)") from None
        except (OSError, UnicodeDecodeError) as e:
            raise AuthError(f"companion {c.name}: cannot read the key file {path}: {e}") from e
        out.append(Companion(c.name, parse_key(text, f"file {path}"), c.position))
    return out


@dataclass
class _Seen:
    """What the board knows of one companion: the replay high-water mark and the last press."""

    key_id: str
    ctr: int = 0
    presses: int = 0
    last_press_t: float | None = None  # wall clock of the board when it accepted the press
    last_action: str | None = None
    last_press: int | None = None
    refusals: int = 0
    last_refusal: str | None = None
    last_refusal_t: float | None = None


class CompanionVerifier:
    """Checks companion requests (see the module doc) and keeps the per-companion counters.

    ``verify`` runs on the event loop and takes microseconds (one HMAC); ``save`` writes the state
    file atomically and belongs on a worker thread. Until the state is saved a crash could lose
    the newest counters; a replay of those few requests within the timestamp window would only
    pause and purge again, what the original request did.
    """

    def __init__(self, companions: list[Companion], board: str, window_s: float, state_path: Path, *,
                 pause_s: float, resume_allowed: bool, clock: Callable[[], float] = time.time) -> None:
        self.companions = {c.name: c for c in companions}
        self.board = board
        self.window_s = window_s
        self.pause_s = pause_s
        self.resume_allowed = resume_allowed
        self.state_path = state_path
        self.clock = clock
        self.refusals: dict[str, int] = dict.fromkeys(REASONS, 0)
        self.save_errors = 0
        self._lock = threading.Lock()
        self._seen = {c.name: _Seen(c.key_id) for c in companions}
        # what changed since the state file was written: ("paired" | "unpaired", name); a new key is
        # unpaired then paired again. None: the file could not be read (nothing is claimed).
        self.pairing: list[tuple[str, str]] | None = None
        self._load()

    @classmethod
    def from_config(cls, loaded: Any, *, clock: Callable[[], float] = time.time, audit: Any = None) -> CompanionVerifier:
        """The companions of a board config (``LoadedConfig``) with their keys; the state file
        beside the audit log. AuthError when a key file is missing or malformed. With ``audit``
        (the AuditLog), a companion paired or unpaired since the last start is logged there
        (event ``paired`` / ``unpaired``, source ``companion``) and the state file updated."""
        cfg = loaded.config
        oc = cfg.privacy.optout
        state = loaded.resolve(cfg.privacy.audit_log).parent / STATE_FILE
        v = cls(load_companions(oc.companions, loaded.resolve), cfg.board.name, oc.companion_window_s, state,
                pause_s=oc.pause_s, resume_allowed=oc.button.resume == "long_press", clock=clock)
        if audit is not None and v.pairing:
            for event, name in v.pairing:
                audit.append(event, "companion", companion=name)
                log.info("companion %s %s", name, event)
            v.save()
        return v

    # -- state file -------------------------------------------------------------------------------
    def _load(self) -> None:
        try:
            raw = self.state_path.read_bytes()[: 64 * 1024]
        except FileNotFoundError:
            self.pairing = [("paired", n) for n in self._seen]
            return
        except OSError as e:
            log.error("companions: cannot read %s: %s; replays are refused by timestamp only until a press is saved",
                      self.state_path, e)
            return
        try:
            data = orjson.loads(raw)
            entries = data["companions"] if isinstance(data, dict) and data.get("schema") == STATE_SCHEMA else None
            if not isinstance(entries, dict):
                raise ValueError("not a companion state file")
        except (orjson.JSONDecodeError, KeyError, ValueError) as e:
            log.error("companions: %s is unreadable (%s); replays are refused by timestamp only until a press is saved",
                      self.state_path, e)
            return
        known = {n: s.get("key_id") if isinstance(s, dict) else None for n, s in entries.items()
                 if isinstance(n, str) and COMPANION_NAME.match(n)}
        self.pairing = [("unpaired", n) for n, k in known.items() if n not in self._seen or self._seen[n].key_id != k]
        self.pairing += [("paired", n) for n, s in self._seen.items() if known.get(n) != s.key_id]
        for name, s in entries.items():
            seen = self._seen.get(name)
            if seen is None or not isinstance(s, dict) or s.get("key_id") != seen.key_id:
                continue  # a companion no longer listed, or re-provisioned with a new key: starts afresh
            ctr = s.get("ctr")
            if isinstance(ctr, int) and not isinstance(ctr, bool) and 0 <= ctr <= MAX_COUNTER:
                seen.ctr = ctr
            for k in ("presses", "last_press"):
                if isinstance(s.get(k), int) and not isinstance(s.get(k), bool):
                    setattr(seen, k, s[k])
            t = s.get("last_press_t")
            if isinstance(t, int | float) and not isinstance(t, bool) and math.isfinite(t):
                seen.last_press_t = float(t)
            if s.get("last_action") in ACTIONS:
                seen.last_action = s["last_action"]

    def save(self) -> None:
        """Write the counters atomically (temp file, fsync, rename). Never raises."""
        with self._lock:
            data = {"schema": STATE_SCHEMA, "companions": {
                n: {"key_id": s.key_id, "ctr": s.ctr, "presses": s.presses, "last_press": s.last_press,
                    "last_press_t": s.last_press_t, "last_action": s.last_action}
                for n, s in self._seen.items()}}
            try:
                atomic_write_bytes(self.state_path, orjson.dumps(data), mode=0o600)
            except OSError as e:
                self.save_errors += 1
                log.error("companions: cannot write %s: %s; the counters are kept in memory", self.state_path, e)

    # -- checking a request -----------------------------------------------------------------------
    def refuse(self, reason: str, message: str, companion: str | None = None, ctr: int | None = None) -> Refused:
        self.refusals[reason] += 1
        seen = self._seen.get(companion or "")
        if seen is not None:
            seen.refusals += 1
            seen.last_refusal, seen.last_refusal_t = reason, round(self.clock(), 3)
        return Refused(reason, message, companion, ctr)

    def verify(self, header: str, body: bytes) -> Accepted:
        """The request's authorization header and body, checked; raises Refused (counted)."""
        scheme, _, cred = header.strip().partition(" ")
        name, _, sig = cred.strip().partition(":")
        if scheme.lower() != SCHEME.lower() or not COMPANION_NAME.match(name):
            raise self.refuse("malformed", f"expected Authorization: {SCHEME} NAME:HEX-HMAC")
        comp = self.companions.get(name)
        if comp is None:
            raise self.refuse("unknown_companion", f"companion {name!r} is not paired with this board "
                              "(privacy.optout.companions)", name)
        if len(body) > MAX_BODY:
            raise self.refuse("malformed", f"the body is over {MAX_BODY} bytes", name)
        if not _SIG.match(sig.lower()) or not hmac.compare_digest(sig.lower(), sign(comp.key, body)):
            raise self.refuse("bad_signature", "the signature does not match the body (wrong key, or altered)", name)
        req = self._parse(body, name)
        seen = self._seen[name]
        if req.ctr <= seen.ctr:
            raise self.refuse("replay", f"counter {req.ctr} was already used (this board has seen {seen.ctr})", name,
                              req.ctr)
        now = self.clock()
        if abs(req.ts - now) > self.window_s:
            raise self.refuse("stale", f"timestamp {req.ts} is {req.ts - now:+.0f} s from the board's clock "
                              f"(window {self.window_s:g} s); use the board's time from this answer", name, req.ctr)
        # A fresh counter is used up now, whatever follows: it can never be replayed.
        seen.ctr = req.ctr
        if req.age_s >= self.pause_s:
            raise self.refuse("expired", f"pressed {req.age_s:.0f} s ago, longer than the pause ({self.pause_s:g} s)",
                              name, req.ctr)
        if req.action == "resume" and not self.resume_allowed:
            raise self.refuse("resume_not_allowed", "a long press does not resume on this board "
                              "(privacy.optout.button.resume is not long_press)", name, req.ctr)
        return req

    def _parse(self, body: bytes, name: str) -> Accepted:
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            obj = None
        if not isinstance(obj, dict) or set(obj) != _FIELDS or obj.get("v") != 1:
            raise self.refuse("malformed", f"the body must be a JSON object with exactly {sorted(_FIELDS)} (v: 1)", name)
        ints = {k: obj[k] for k in ("ts", "ctr", "press", "age_ms")}
        if any(isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_COUNTER for v in ints.values()):
            raise self.refuse("malformed", "ts, ctr, press and age_ms must be non-negative integers", name)
        if obj["companion"] != name or obj["action"] not in ACTIONS or not isinstance(obj["board"], str):
            raise self.refuse("malformed", f"companion must be {name!r} and action one of {ACTIONS}", name)
        if obj["board"] != self.board:
            raise self.refuse("wrong_board", f"this request is for board {obj['board'][:64]!r}, this is {self.board!r}",
                              name)
        if ints["press"] > ints["ctr"] or ints["ctr"] == 0:
            raise self.refuse("malformed", "press must not be above ctr, and ctr starts at 1", name)
        return Accepted(name, obj["action"], ints["ts"], ints["ctr"], ints["press"], ints["age_ms"] / 1000.0)

    def counter(self, name: str) -> int:
        """The highest counter accepted from ``name`` (told to a companion whose own was lost)."""
        return self._seen[name].ctr

    def accepted(self, req: Accepted) -> None:
        """Record an accepted press (for status, metrics and the state file)."""
        seen = self._seen[req.companion]
        seen.presses += 1
        seen.last_press, seen.last_action, seen.last_press_t = req.press, req.action, round(self.clock(), 3)

    # -- what the board shows ---------------------------------------------------------------------
    def status(self) -> list[dict[str, Any]]:
        out = []
        for name, s in self._seen.items():
            c = self.companions[name]
            out.append({"name": name, "key_id": s.key_id, "position": c.position, "presses": s.presses,
                        "last_press_t": s.last_press_t, "last_action": s.last_action, "last_press": s.last_press,
                        "counter": s.ctr, "refusals": s.refusals, "last_refusal": s.last_refusal,
                        "last_refusal_t": s.last_refusal_t})
        return out
