"""The bundle's container, read by our own strict reader of the POSIX tar format.

A bundle is a plain (uncompressed) tar as ``tarfile`` and GNU tar write it, so any tar tool can
list or unpack it on a host. On the board it is read here, header by header, with ``os.pread``
on the bundle's file descriptor: no ``tarfile`` (whose private hooks the reader would otherwise
have to override to refuse what a bundle never holds before tarfile acts on it), no seeking
beyond the file, nothing extracted by anyone but the verifier.

What is read: 512-byte headers (ustar, GNU or v7 magic; the ustar ``prefix`` joined to the name),
pax extended headers (``x``, capped at MAX_EXTENDED_HEADER; ``path``, ``linkpath`` and ``size``
apply to the next member) and GNU long names (``L``/``K``, capped alike). Refused on sight: pax
global headers, any sparse member (GNU ``S`` or pax ``GNU.sparse.*``), base-256 number fields,
names that are not UTF-8. Every header's checksum field must read exactly as tar writes it
(``%06o\\0 ``), padding after each member's data must be zero, and the end-of-archive marker must
be followed by zero padding up to a whole 10240-byte record, so every single-bit change anywhere
in a bundle is rejected, not only the ones that land in signed bytes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass

from .errors import fail

BLOCK = 512
RECORD = 20 * BLOCK  # 10240: tarfile and GNU tar pad archives to whole records
CHUNK = 1 << 20
MAX_EXTENDED_HEADER = 64 * 1024  # pax / GNU long-name headers: a few hundred bytes in practice

REGTYPE, AREGTYPE, LNKTYPE, SYMTYPE = b"0", b"\0", b"1", b"2"
CHRTYPE, BLKTYPE, DIRTYPE, FIFOTYPE, CONTTYPE = b"3", b"4", b"5", b"6", b"7"
PAX_LOCAL, PAX_GLOBAL, SOLARIS_LOCAL = b"x", b"g", b"X"
GNU_LONGNAME, GNU_LONGLINK, GNU_SPARSE = b"L", b"K", b"S"
_POSIX_MAGIC = b"ustar\x0000"


@dataclass(frozen=True)
class Member:
    name: str
    size: int
    type: bytes
    linkname: str
    offset: int  # of its (last) header block
    offset_data: int

    def type_problem(self) -> tuple[str, str] | None:
        """Why this member is not a regular file (a bundle holds nothing else), or None."""
        name = repr(self.name[:120])
        t = self.type
        if t == SYMTYPE:
            return "symlink", f"member {name} is a symlink (to {self.linkname[:120]!r})"
        if t == LNKTYPE:
            return "hardlink", f"member {name} is a hard link (to {self.linkname[:120]!r})"
        if t in (CHRTYPE, BLKTYPE):
            return "device-file", f"member {name} is a device file"
        if t == FIFOTYPE:
            return "device-file", f"member {name} is a FIFO"
        if t == DIRTYPE or (t == AREGTYPE and self.name.endswith("/")):
            return "directory", f"member {name} is a directory entry"
        if t not in (REGTYPE, AREGTYPE):
            return "not-regular", f"member {name} has tar type {t!r}, not a regular file"
        return None


def _text(field: bytes, what: str) -> str:
    raw = field.split(b"\0", 1)[0]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        fail("corrupt-archive", f"a tar header's {what} is not UTF-8")


def _octal(field: bytes, what: str, offset: int) -> int:
    if field[:1] in (b"\x80", b"\xff"):
        fail("corrupt-archive", f"the tar header at byte {offset} has a base-256 {what}")
    raw = field.split(b"\0", 1)[0].strip(b" ")
    if not raw:
        return 0
    try:
        return int(raw, 8)
    except ValueError:
        fail("corrupt-archive", f"the tar header at byte {offset} has a {what} that is not octal")


def _pax_records(data: bytes, offset: int) -> dict[str, str]:
    """``"%d %s=%s\\n"`` records (the length counts the whole record)."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        if data[pos:].strip(b"\0") == b"":
            break
        space = data.find(b" ", pos, pos + 20)
        try:
            length = int(data[pos:space]) if space > pos else 0
        except ValueError:
            length = 0
        end = pos + length
        if length <= 0 or end > len(data) or data[end - 1:end] != b"\n" or b"=" not in data[space + 1:end]:
            fail("corrupt-archive", f"the pax header at byte {offset} is malformed")
        key, _, value = data[space + 1:end - 1].partition(b"=")
        try:
            out[key.decode("utf-8")] = value.decode("utf-8")
        except UnicodeDecodeError:
            fail("corrupt-archive", f"the pax header at byte {offset} is not UTF-8")
        pos = end
    return out


class TarReader:
    """One forward pass over one bundle's tar, on a file descriptor of ``size`` bytes."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self.offset = 0  # of the next header block (after the last member: of the end marker)

    def _pread(self, n: int, offset: int) -> bytes:
        data = os.pread(self.fd, n, offset)
        if len(data) != n:
            fail("truncated", f"the archive ends at byte {self.size}, inside data expected up to byte {offset + n}")
        return data

    def _header(self, offset: int) -> bytes | None:
        """The header block at ``offset``, checksum checked; None for a zero block (the end)."""
        if offset + BLOCK > self.size:
            if offset >= self.size:
                if offset == 0:
                    fail("not-a-bundle", "the file is empty")
                return None  # no end marker: check_end says so
            if offset == 0:
                fail("not-a-bundle", f"is {self.size} bytes, less than one tar header")
            fail("truncated", "the archive ends in the middle of a tar header")
        block = self._pread(BLOCK, offset)
        if block.count(0) == BLOCK:
            if offset == 0:
                fail("not-a-bundle", "is an empty tar archive")
            return None
        unsigned_sum = sum(block[:148]) + 8 * 0x20 + sum(block[156:])  # POSIX: the field counts as spaces
        signed_sum = unsigned_sum - 2 * sum(b for b in block[:148] + block[156:] if b > 127)
        try:
            claimed = int(block[148:156].split(b"\0", 1)[0].strip(b" ") or b"-1", 8)
        except ValueError:
            claimed = -1
        if claimed not in (unsigned_sum, signed_sum):
            if offset == 0:
                fail("not-a-bundle", "is not a tar archive (its first header's checksum does not match)")
            fail("corrupt-archive", f"the tar header at byte {offset} is damaged (bad checksum)")
        if block[148:156] != b"%06o\x00 " % unsigned_sum:
            fail("corrupt-archive", f"the tar header at byte {offset} is not in canonical form")
        return block

    def _extended(self, offset: int, size: int) -> bytes:
        if size > MAX_EXTENDED_HEADER:
            fail("too-large", f"an extended tar header of {size} bytes (more than {MAX_EXTENDED_HEADER})")
        data = self._pread(size, offset + BLOCK)
        self._check_zero_padding(offset + BLOCK + size, size, f"the extended header at byte {offset}")
        return data

    def next(self) -> Member | None:
        """The next member (its extended headers applied), or None at the end-of-archive marker."""
        pax: dict[str, str] = {}
        long_name: str | None = None
        long_link: str | None = None
        offset = self.offset
        while True:
            block = self._header(offset)
            if block is None:
                self.offset = offset
                return None
            kind = block[156:157]
            size = _octal(block[124:136], "size", offset)
            if kind == GNU_SPARSE:
                fail("sparse", f"member {_text(block[0:100], 'name')[:80]!r} is a sparse file")
            if kind == PAX_GLOBAL:
                fail("corrupt-archive", "the archive holds a pax global header")
            if kind in (PAX_LOCAL, SOLARIS_LOCAL):
                pax.update(_pax_records(self._extended(offset, size), offset))
            elif kind in (GNU_LONGNAME, GNU_LONGLINK):
                text = _text(self._extended(offset, size), "long name")
                if kind == GNU_LONGNAME:
                    long_name = text
                else:
                    long_link = text
            else:
                break
            offset += BLOCK + -(-size // BLOCK) * BLOCK
        name = _text(block[0:100], "name")
        if block[257:265] == _POSIX_MAGIC and block[345]:
            name = _text(block[345:500], "prefix") + "/" + name
        linkname = _text(block[157:257], "link name")
        name = pax.get("path", long_name if long_name is not None else name)
        linkname = pax.get("linkpath", long_link if long_link is not None else linkname)
        if any(k.startswith("GNU.sparse.") for k in pax):
            fail("sparse", f"member {name[:80]!r} is a sparse file")
        if "size" in pax:
            try:
                size = int(pax["size"])
            except ValueError:
                fail("corrupt-archive", f"the pax size of member {name[:80]!r} is not a number")
            if size < 0:
                fail("corrupt-archive", f"member {name[:80]!r} declares a negative size")
        member = Member(name, size, kind, linkname, offset, offset + BLOCK)
        has_data = kind in (REGTYPE, AREGTYPE, CONTTYPE)  # the other types are refused by the verifier
        self.offset = member.offset_data + (-(-size // BLOCK) * BLOCK if has_data else 0)
        return member

    def _check_zero_padding(self, at: int, size: int, what: str) -> None:
        pad = -size % BLOCK
        if pad and self._pread(pad, at).count(0) != pad:
            fail("corrupt-archive", f"the padding after {what} is not zero")

    def check_padding(self, m: Member) -> None:
        self._check_zero_padding(m.offset_data + m.size, m.size, f"member {m.name[:120]!r}")

    def read_small(self, m: Member) -> bytes:
        if m.offset_data + m.size > self.size:
            fail("truncated", f"the archive ends inside member {m.name!r}")
        data = self._pread(m.size, m.offset_data)
        self.check_padding(m)
        return data

    def copy(self, m: Member, write: Callable[[memoryview], None]) -> str:
        """Hand the member's data to ``write`` in chunks; returns its sha256 (hex)."""
        if m.offset_data + m.size > self.size:
            fail("truncated", f"the archive ends inside member {m.name!r}")
        h = hashlib.sha256()
        pos, end = m.offset_data, m.offset_data + m.size
        while pos < end:
            chunk = self._pread(min(CHUNK, end - pos), pos)
            h.update(chunk)
            write(memoryview(chunk))
            pos += len(chunk)
        return h.hexdigest()

    def check_end(self) -> None:
        """After the last member: the end-of-archive marker, then zero padding to a whole record."""
        offset = self.offset
        tail = self.size - offset
        if tail < 2 * BLOCK:
            fail("truncated", "the archive ends without its end-of-archive marker")
        limit = min(tail, 2 * BLOCK + RECORD)
        pos = 0
        while pos < limit:
            data = self._pread(min(CHUNK, limit - pos), offset + pos)
            if data.count(0) != len(data):
                at = offset + pos + next(i for i, b in enumerate(data) if b)
                fail("corrupt-archive", f"unexpected data at byte {at}, where the archive should have ended")
            pos += len(data)
        if self.size % RECORD:
            fail("truncated", f"the archive is {self.size} bytes, not a whole number of {RECORD}-byte records")
        if tail - 2 * BLOCK >= RECORD:
            fail("trailing-data", f"{tail - 2 * BLOCK} bytes follow the end-of-archive marker")
