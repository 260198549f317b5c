"""A/B firmware slots with trial boots, automatic rollback and an anti-rollback floor.

Layout under ``root``::

    root/state.json          {"format":1,"active":"a","trial":null,"versions":{"a":"1.0.0","b":null},
                              "floor":"1.0.0","boot_attempts":0}
    root/slots/a/...         a full copy of one version's files, plus
    root/slots/a/files.json  {"format":1,"version":"1.0.0","files":{"rel/path":{"sha256":..,"size":..}}}
    root/slots/a/VERSION     "1.0.0\\n", written last: a slot without it is incomplete
    root/slots/a/COMMITTED   written when the slot's version passed its health check (used by recovery)

``state.json`` is only ever replaced atomically (temp file, fsync, ``os.replace``, fsync the folder) and
every write goes through :mod:`ota.faults`, so the power-cut tests can stop the process at any step.

The life of an update: :meth:`SlotStore.install` marks the inactive slot empty in the state, clears it,
copies the verified staging tree into it (each file fsynced, then every folder, then ``files.json``, then
``VERSION``) and finally sets ``trial`` to it (that state write is the switch). :meth:`SlotStore.boot`
starts the trial slot, counting the attempt *before* it starts, and rolls back to the active slot once
the attempts exceed ``max_boot_attempts``; :meth:`SlotStore.commit` after a passing health check makes the
trial slot active and raises the floor. A slot is only ever started after its files verified against
its ``files.json``; a missing or corrupt ``state.json`` is rebuilt from the slots themselves.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from firmware.errors import CuecamError

from . import faults

SLOTS = ("a", "b")
STATE_FORMAT = 1
FILES_FORMAT = 1
STATE_NAME = "state.json"
VERSION_NAME = "VERSION"
FILES_NAME = "files.json"
COMMITTED_NAME = "COMMITTED"
# The only files a slot holds that files.json does not list: the store's own bookkeeping, written
# by the store itself. Nothing else is ignored: a stray file (a library's FIFO, __pycache__) makes
# the slot fail its check, and the check says what the file is. The firmware runs with its
# working directory in RUN_DIR_NAME (outside the slots) and PYTHONDONTWRITEBYTECODE=1 for that.
RESERVED = frozenset({VERSION_NAME, FILES_NAME, COMMITTED_NAME})
RUN_DIR_NAME = "run"
_VERSION_RE = re.compile(r"^[0-9]{1,9}(\.[0-9]{1,9}){0,3}$")
_CHUNK = 1 << 20


class OtaError(CuecamError):
    """An update cannot be installed, booted or committed; the message says why and what to do."""

    exit_code = 4


def parse_version(version: str) -> tuple[int, ...]:
    """``"1.2.3"`` -> ``(1, 2, 3)``; dotted decimal, 1 to 4 parts, compared numerically (1.10 > 1.9)."""
    if not isinstance(version, str) or not _VERSION_RE.match(version):
        raise OtaError(f"version {version!r} is not dotted decimal like 1.2.3")
    parts = tuple(int(p) for p in version.split("."))
    return parts + (0,) * (4 - len(parts))


def other(slot: str) -> str:
    return "b" if slot == "a" else "a"


@dataclass(frozen=True)
class BootChoice:
    """What to start: ``slot`` holding ``version``; ``trial`` when it still has to pass its health check."""

    slot: str
    version: str
    trial: bool
    reason: str = "active"  # active | trial | rolled_back | trial_incomplete | fallback | recovered
    boot_attempts: int = 0


@dataclass(frozen=True)
class SlotCheck:
    ok: bool
    version: str | None
    problem: str = ""


class SlotStore:
    def __init__(self, root: Path, max_boot_attempts: int = 3, *, fs: faults.FsOps | None = None) -> None:
        if max_boot_attempts < 1:
            raise ValueError("max_boot_attempts must be at least 1")
        self.root = Path(root)
        self.max_boot_attempts = max_boot_attempts
        self.fs = fs if fs is not None else faults.get()

    # -- paths -----------------------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self.root / STATE_NAME

    def run_dir(self) -> Path:
        """The firmware's working directory: outside the slots, created (0700) when missing."""
        d = self.root / RUN_DIR_NAME
        d.mkdir(mode=0o700, exist_ok=True)
        return d

    def slot_dir(self, slot: str) -> Path:
        if slot not in SLOTS:
            raise OtaError(f"no slot {slot!r}: slots are a and b")
        return self.root / "slots" / slot

    # -- public operations -------------------------------------------------------------------------

    def init(self, version: str, source_dir: Path) -> dict[str, Any]:
        """A fresh device: slot a gets ``source_dir`` as ``version``, committed; slot b stays empty."""
        parse_version(version)
        if self.state_path.exists():
            raise OtaError(f"{self.root} is already initialised ({STATE_NAME} exists); use install to update it")
        files = _scan_source(Path(source_dir))
        for d in (self.root, self.root / "slots"):
            if not d.is_dir():
                d.parent.mkdir(parents=True, exist_ok=True)
                self.fs.mkdir(d)
                self.fs.fsync_dir(d.parent)
        with self._locked():
            self._fill_slot("a", Path(source_dir), files, version)
            self._mark_committed("a")
            state = {"format": STATE_FORMAT, "active": "a", "trial": None, "versions": {"a": version, "b": None},
                     "floor": version, "boot_attempts": 0}
            self._write_state(state)
            return state

    def install(self, staged: Path, version: str) -> dict[str, Any]:
        """Copy an already verified staging tree into the inactive slot and make it the trial slot."""
        staged = Path(staged)
        parse_version(version)
        files = _scan_source(staged)
        with self._locked():
            state, _ = self._load_or_recover()
            if parse_version(version) < parse_version(state["floor"]):
                raise OtaError(f"version {version} is older than the installed floor {state['floor']}; "
                               "downgrades are refused, build a bundle with a higher version")
            target = other(state["active"])
            # The state stops pointing at the slot before a single byte of it changes.
            if state["versions"][target] is not None or state["trial"] is not None or state["boot_attempts"]:
                state = dict(state, trial=None, boot_attempts=0, versions=dict(state["versions"], **{target: None}))
                self._write_state(state)
            self._fill_slot(target, staged, files, version)
            check = self.check_slot(target, version)
            if not check.ok:
                raise OtaError(f"slot {target} does not verify right after writing it ({check.problem}); "
                               "the storage may be failing, the active slot is untouched")
            state = dict(state, trial=target, boot_attempts=0, versions=dict(state["versions"], **{target: version}))
            self._write_state(state)
            return state

    def boot(self) -> BootChoice:
        """Choose the slot to start. A trial boot is counted (and persisted) before it is returned."""
        with self._locked():
            state, recovered = self._load_or_recover()
            trial = state["trial"]
            if trial is not None:
                version = state["versions"][trial]
                check = self.check_slot(trial, version)
                if not check.ok:
                    return self._start_committed(self._roll_back(state), "trial_incomplete")
                attempts = state["boot_attempts"] + 1
                if attempts > self.max_boot_attempts:
                    return self._start_committed(self._roll_back(state), "rolled_back")
                state = dict(state, boot_attempts=attempts)
                self._write_state(state)
                return BootChoice(trial, version, True, "trial", attempts)
            return self._start_committed(state, "recovered" if recovered else "active")

    def commit(self) -> dict[str, Any]:
        """The trial slot passed its health check: make it active and raise the floor to its version."""
        with self._locked():
            state, _ = self._load_or_recover()
            trial = state["trial"]
            if trial is None:
                raise OtaError("there is no trial slot to commit; install an update and boot it first")
            if state["boot_attempts"] < 1:
                raise OtaError(f"trial slot {trial} has not been booted; boot it and pass its health check before committing")
            version = state["versions"][trial]
            check = self.check_slot(trial, version)
            if not check.ok:
                raise OtaError(f"trial slot {trial} does not verify ({check.problem}); it will be rolled back at the next boot")
            self._mark_committed(trial)
            floor = max(state["floor"], version, key=parse_version)
            state = dict(state, active=trial, trial=None, floor=floor, boot_attempts=0)
            self._write_state(state)
            return state

    def rollback(self) -> dict[str, Any]:
        """Abandon the trial slot: the active slot stays, the trial slot is marked empty."""
        with self._locked():
            state, _ = self._load_or_recover()
            if state["trial"] is None:
                raise OtaError("there is no trial slot to roll back; the active slot is already the committed one")
            return self._roll_back(state)

    def status(self) -> dict[str, Any]:
        if not self.root.is_dir():
            raise OtaError(f"{self.root} does not exist; initialise the device first (ota.installer init)")
        state = self._read_state()
        slots = {}
        for slot in SLOTS:
            d = self.slot_dir(slot)
            on_disk = _read_text(d / VERSION_NAME)
            check = self.check_slot(slot, on_disk) if on_disk is not None else SlotCheck(False, None, "no VERSION")
            slots[slot] = {"version": on_disk, "complete": check.ok, "problem": check.problem,
                           "committed_marker": (d / COMMITTED_NAME).is_file()}
        return {"root": str(self.root), "state": state, "state_ok": state is not None,
                "max_boot_attempts": self.max_boot_attempts, "slots": slots}

    # -- verification --------------------------------------------------------------------------------

    def check_slot(self, slot: str, version: str | None) -> SlotCheck:
        """Is ``slot`` complete and exactly ``version``: VERSION, files.json and every file's size and sha256?"""
        d = self.slot_dir(slot)
        on_disk = _read_text(d / VERSION_NAME)
        if on_disk is None:
            return SlotCheck(False, None, "no VERSION (never finished writing)")
        if version is not None and on_disk != version:
            return SlotCheck(False, on_disk, f"VERSION says {on_disk}, expected {version}")
        try:
            listing = json.loads((d / FILES_NAME).read_bytes())
            files = listing["files"]
            if listing.get("format") != FILES_FORMAT or listing.get("version") != on_disk or not isinstance(files, dict):
                return SlotCheck(False, on_disk, f"{FILES_NAME} is not for version {on_disk}")
        except (OSError, ValueError, KeyError, TypeError):
            return SlotCheck(False, on_disk, f"{FILES_NAME} is missing or corrupt")
        try:
            present = {p for p in _walk_files(d) if p not in RESERVED}
        except OSError as e:
            return SlotCheck(False, on_disk, f"cannot list the slot: {e}")
        if present != set(files):
            missing, extra = sorted(set(files) - present), sorted(present - set(files))
            shown = [f"{rel} ({_kind(d / rel)})" for rel in extra[:3]]
            return SlotCheck(False, on_disk, f"files differ from {FILES_NAME}: missing {missing[:3]}, extra {shown}")
        for rel, meta in files.items():
            try:
                size, digest = _hash_file(d / rel)
            except OSError as e:
                return SlotCheck(False, on_disk, f"{rel}: {e}")
            if not isinstance(meta, dict) or size != meta.get("size") or digest != meta.get("sha256"):
                return SlotCheck(False, on_disk, f"{rel} does not match its sha256")
        return SlotCheck(True, on_disk)

    # -- internals ------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time: an flock on the root folder itself (nothing to create, nothing to clean)."""
        if not self.root.is_dir():
            raise OtaError(f"{self.root} does not exist; initialise the device first (ota.installer init)")
        fd = os.open(self.root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _start_committed(self, state: dict[str, Any], reason: str) -> BootChoice:
        """Start the active slot, or the other committed one when the active one does not verify."""
        active = state["active"]
        if self.check_slot(active, state["versions"][active]).ok:
            self._mark_committed(active)  # heals a marker lost to a cut between a commit's two writes
            return BootChoice(active, state["versions"][active], False, reason)
        alt = other(active)
        alt_version = state["versions"][alt]
        if alt_version is not None and state["trial"] is None and self.check_slot(alt, alt_version).ok:
            self._write_state(dict(state, active=alt, boot_attempts=0, versions=dict(state["versions"], **{active: None})))
            return BootChoice(alt, alt_version, False, "fallback")
        # The state names nothing startable: rebuild it from what the slots hold.
        state = self._recover()
        return BootChoice(state["active"], state["versions"][state["active"]], False, "recovered")

    def _roll_back(self, state: dict[str, Any]) -> dict[str, Any]:
        """Forget the trial slot (state first); a COMMITTED marker a cut-short commit left on it goes too."""
        trial = state["trial"]
        state = dict(state, trial=None, boot_attempts=0, versions=dict(state["versions"], **{trial: None}))
        self._write_state(state)
        marker = self.slot_dir(trial) / COMMITTED_NAME
        if os.path.lexists(marker):
            self.fs.unlink(marker)
            self.fs.fsync_dir(marker.parent)
        return state

    def _read_state(self) -> dict[str, Any] | None:
        try:
            raw = json.loads(self.state_path.read_bytes())
        except (OSError, ValueError):
            return None
        return raw if _valid_state(raw) else None

    def _load_or_recover(self) -> tuple[dict[str, Any], bool]:
        state = self._read_state()
        if state is not None:
            return state, False
        return self._recover(), True

    def _recover(self) -> dict[str, Any]:
        """Rebuild state.json from the slots: the highest verified committed slot, else the highest verified one."""
        found = {}
        for slot in SLOTS:
            check = self.check_slot(slot, None)
            if check.ok and check.version is not None:
                found[slot] = (check.version, (self.slot_dir(slot) / COMMITTED_NAME).is_file())
        if not found:
            raise OtaError(f"no slot under {self.root / 'slots'} verifies and {STATE_NAME} is unusable; "
                           "reflash the board (nothing on it can be started safely)")
        committed = [s for s in found if found[s][1]] or list(found)
        active = max(committed, key=lambda s: parse_version(found[s][0]))
        alt = other(active)
        alt_version = found[alt][0] if alt in found and found[alt][1] else None
        versions = {active: found[active][0], alt: alt_version}
        state: dict[str, Any] = {"format": STATE_FORMAT, "active": active, "trial": None,
                                 "versions": {s: versions[s] for s in SLOTS}, "floor": found[active][0], "boot_attempts": 0}
        self._write_state(state)
        return state

    def _write_state(self, state: dict[str, Any]) -> None:
        assert _valid_state(state), state
        data = (json.dumps(state, indent=1, sort_keys=True) + "\n").encode()
        tmp = self.root / (STATE_NAME + ".tmp")
        self.fs.write_file(tmp, data)
        self.fs.fsync(tmp)
        self.fs.replace(tmp, self.state_path)
        self.fs.fsync_dir(self.root)

    def _mark_committed(self, slot: str) -> None:
        marker = self.slot_dir(slot) / COMMITTED_NAME
        if marker.is_file():
            return
        self.fs.write_file(marker, b"")
        self.fs.fsync(marker)
        self.fs.fsync_dir(marker.parent)

    def _fill_slot(self, slot: str, source: Path, files: list[str], version: str) -> None:
        """Clear ``slot`` and write ``files`` from ``source`` into it; VERSION goes last."""
        d = self.slot_dir(slot)
        if d.is_dir():
            # First make the slot visibly incomplete (durably), then remove the rest.
            for name in (COMMITTED_NAME, VERSION_NAME):
                if os.path.lexists(d / name):
                    self.fs.unlink(d / name)
            self.fs.fsync_dir(d)
            if any(d.iterdir()):
                self.fs.clear_tree(d)
                self.fs.fsync_dir(d)
        else:
            self.fs.mkdir(d)
            self.fs.fsync_dir(d.parent)
        dirs = sorted({str(Path(rel).parent) for rel in files} - {"."}, key=lambda p: (p.count("/"), p))
        made: set[str] = set()
        for rel_dir in dirs:
            parts = Path(rel_dir).parts
            for i in range(1, len(parts) + 1):
                sub = "/".join(parts[:i])
                if sub not in made:
                    self.fs.mkdir(d / sub)
                    made.add(sub)
        listing: dict[str, dict[str, Any]] = {}
        for rel in files:
            digest, size = self.fs.copy_file(source / rel, d / rel)
            self.fs.fsync(d / rel)
            listing[rel] = {"sha256": digest, "size": size}
        for sub in sorted(made, key=lambda p: (-p.count("/"), p)):
            self.fs.fsync_dir(d / sub)
        self.fs.fsync_dir(d)
        files_json = {"format": FILES_FORMAT, "version": version, "files": listing}
        self.fs.write_file(d / FILES_NAME, (json.dumps(files_json, indent=1, sort_keys=True) + "\n").encode())
        self.fs.fsync(d / FILES_NAME)
        self.fs.fsync_dir(d)
        self.fs.write_file(d / VERSION_NAME, f"{version}\n".encode())
        self.fs.fsync(d / VERSION_NAME)
        self.fs.fsync_dir(d)


def _valid_state(s: Any) -> bool:
    try:
        if not isinstance(s, dict) or s.get("format") != STATE_FORMAT:
            return False
        if set(s) != {"format", "active", "trial", "versions", "floor", "boot_attempts"}:
            return False
        versions = s["versions"]
        if not isinstance(versions, dict) or set(versions) != set(SLOTS):
            return False
        for v in versions.values():
            if v is not None:
                parse_version(v)
        parse_version(s["floor"])
        attempts = s["boot_attempts"]
        return (s["active"] in SLOTS and versions[s["active"]] is not None
                and (s["trial"] is None or (s["trial"] in SLOTS and s["trial"] != s["active"]
                                            and versions[s["trial"]] is not None))
                and isinstance(attempts, int) and not isinstance(attempts, bool) and attempts >= 0)
    except (OtaError, TypeError, KeyError):
        return False


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def _kind(path: Path) -> str:
    """What an unexpected entry is, for the slot check's message."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return "gone"
    if stat.S_ISFIFO(mode):
        hint = "; lgpio's notification pipe: run the firmware outside the slot" if path.name.startswith(".lgd-nfy") else ""
        return "a FIFO" + hint
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if "__pycache__" in path.parts:
        return "Python bytecode: run with PYTHONDONTWRITEBYTECODE=1"
    return "a file"


def _walk_files(top: Path) -> list[str]:
    """Every non-directory entry under ``top`` as a posix relative path (symlinks count as entries)."""
    out = []

    def onerror(e: OSError) -> None:
        raise e

    for dirpath, dirnames, filenames in os.walk(top, onerror=onerror):
        rel_dir = os.path.relpath(dirpath, top)
        for name in filenames + [n for n in dirnames if os.path.islink(os.path.join(dirpath, n))]:
            out.append(name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/"))
    return out


def _scan_source(source: Path) -> list[str]:
    """The regular files of a staging tree, sorted; refuses symlinks, special files and reserved names."""
    if not source.is_dir():
        raise OtaError(f"staging directory {source} does not exist or is not a directory")
    files = []
    for dirpath, dirnames, filenames in os.walk(source):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p.is_symlink():
                raise OtaError(f"{p} is a symlink; bundles may only hold regular files and folders")
            if name in filenames and not p.is_file():
                raise OtaError(f"{p} is not a regular file")
        rel_dir = os.path.relpath(dirpath, source)
        for name in filenames:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/")
            if rel in RESERVED:
                raise OtaError(f"{source / rel} uses the reserved name {rel}; the slot store writes that file itself")
            files.append(rel)
    if not files:
        raise OtaError(f"staging directory {source} holds no files")
    return sorted(files)


def _hash_file(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def choice_dict(choice: BootChoice) -> dict[str, Any]:
    return asdict(choice)
