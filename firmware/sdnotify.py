"""systemd's notify protocol (sd_notify(3)): READY=1, WATCHDOG=1, STATUS=... as datagrams.

The protocol is one ``AF_UNIX``/``SOCK_DGRAM`` datagram of newline-separated ``KEY=value`` lines
to the socket named by ``$NOTIFY_SOCKET`` (a path, or ``@name`` for an abstract socket). That is
a dozen lines, so it is written here rather than taken from a library: Debian's python3-sdnotify
(and the ``sdnotify`` PyPI package) do not read ``WATCHDOG_USEC``/``WATCHDOG_PID`` and are not in
the venv we build from PyPI, and libsystemd bindings need a C build on the board.

The firmware usually runs as a child of ``python -m ota.launch`` (the unit's main process, with
``NotifyAccess=all``), so ``WATCHDOG_PID`` names our parent: the watchdog is ours when it names
this process, or its parent when that parent is the launcher (``CUECAM_OTA_SLOT`` is set).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)
MAX_STATUS = 200  # STATUS= is for humans (systemctl status): keep it one short line


class Notifier:
    """Sends notify messages; every method is a no-op when not run under systemd. Never raises."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.address = _address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_s = _watchdog_s(env)
        self.sent = 0
        self.errors = 0
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to ping: half of WatchdogSec, as sd_watchdog_enabled(3) advises."""
        return None if self.watchdog_s is None or not self.enabled else self.watchdog_s / 2.0

    def notify(self, **fields: str | int) -> bool:
        """Send one message (``READY=1``, ``STATUS=...``); True when it was sent."""
        if self.address is None:
            return False
        lines = []
        for k, v in fields.items():
            text = str(v).replace("\n", " ")
            lines.append(f"{k}={text[:MAX_STATUS] if k == 'STATUS' else text}")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(lines).encode("utf-8"), self.address)
        except OSError as e:  # systemd gone or socket full: never take the device down for it
            self.errors += 1
            if self.errors in (1, 10, 100) or self.errors % 1000 == 0:
                log.warning("sd_notify to %r failed (%d so far): %s", self.address, self.errors, e)
            return False
        self.sent += 1
        return True

    def ready(self, status: str) -> bool:
        return self.notify(READY=1, STATUS=status)

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG=1)

    def status(self, text: str) -> bool:
        return self.notify(STATUS=text)

    def stopping(self) -> bool:
        return self.notify(STOPPING=1, STATUS="stopping")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _address(value: str) -> str | None:
    if not value:
        return None
    if value.startswith("@"):  # abstract namespace: a leading NUL byte
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    log.warning("ignoring NOTIFY_SOCKET=%r: neither a path nor an abstract socket (@name)", value)
    return None


def _watchdog_s(env: Mapping[str, str]) -> float | None:
    usec = env.get("WATCHDOG_USEC", "")
    if not usec:
        return None
    try:
        us = int(usec)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not an integer", usec)
        return None
    if us <= 0:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid:
        mine = {os.getpid()}
        if env.get("CUECAM_OTA_SLOT"):  # started by ota.launch, the unit's main process
            mine.add(os.getppid())
        try:
            if int(pid) not in mine:
                return None  # the watchdog belongs to another process
        except ValueError:
            return None
    return us / 1e6
