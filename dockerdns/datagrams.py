"""Datagrams in batches: recvmmsg(2) and sendmmsg(2) on Linux, one system call for many queries.

Python's socket module has recvfrom and sendto, one datagram per call; under
load the calls, not the answers, are most of a query's cost. `Batch` asks
the kernel for up to `size` waiting datagrams at once (blocking only until
the first one) and sends the answers to them back in one call, through
ctypes and the C library: no new dependency, nothing compiled.

Rule 1: a datagram is never cut: every receive slot holds MAX_DATAGRAM
        bytes. The slots live in anonymous memory, so only the pages that
        datagrams touch are resident (a few KiB per slot for DNS queries).
Rule 2: an answer goes back to the address its query came from, which the
        kernel already wrote into the slot: nothing is converted for it.
Rule 3: a source is what the kernel wrote, as one int for IPv4 (family,
        port and address: the sockaddr_in's first 8 bytes) or the
        sockaddr_in6's bytes: cheap to hash (a worker's fair queue keys
        on it) and written back as it is for the answer. The client's
        address as Python gives it (host, port[, flowinfo, scope id]) is
        built once per source and remembered (bounded).
Rule 4: where the C library lacks the calls (not Linux), `available()` is
        False and the servers use recvfrom and sendto.
Rule 5: a call that would block releases the GIL; one that cannot
        (MSG_DONTWAIT) keeps it. A thread that has the GIL takes the next
        batch and sends its answers without queueing for the GIL again
        behind a busy thread (a reload): it waits for the GIL once per
        switch interval, not once per batch.

Thread-safety: a Batch belongs to one thread; several Batches may share one
(blocking) socket.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os
import socket
import sys
from typing import Any, NamedTuple

from .fairqueue import SMALL  # a datagram over it counts in `large_bytes`

MAX_DATAGRAM = 65536  # bytes per slot: the largest UDP payload fits
BATCH = 32  # datagrams per call
MSG_WAITFORONE = 0x10000  # recvmmsg: block for the first datagram only
MSG_DONTWAIT = 0x40
NAME_SIZE = 32  # bytes per source address: sockaddr_in6 is 28
WORDS_PER_NAME = NAME_SIZE // 8
V4_NAME, V6_NAME = 16, 28  # sizeof(sockaddr_in), sizeof(sockaddr_in6)
MAX_PEERS = 4096  # source addresses remembered (Rule 3); past it the memo starts over


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


class _Calls(NamedTuple):
    """recvmmsg and sendmmsg twice: letting other threads run while the call blocks (a wait), and
    keeping the GIL for a call that cannot block (MSG_DONTWAIT), so that a thread that has the GIL
    goes on with the datagrams that wait instead of queueing for it again (Rule 5)."""

    recv_wait: Any
    send_wait: Any
    recv_now: Any
    send_now: Any


def _libc() -> _Calls | None:
    if not hasattr(socket, "AF_INET6") or os.uname().sysname != "Linux":
        return None
    path = ctypes.util.find_library("c") or "libc.so.6"
    try:
        releasing, holding = ctypes.CDLL(path, use_errno=True), ctypes.PyDLL(path, use_errno=True)
        calls = _Calls(releasing.recvmmsg, releasing.sendmmsg, holding.recvmmsg, holding.sendmmsg)
    except (OSError, AttributeError):
        return None
    for recv in (calls.recv_wait, calls.recv_now):
        recv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
        recv.restype = ctypes.c_int
    for send in (calls.send_wait, calls.send_now):
        send.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
        send.restype = ctypes.c_int
    return calls


_LIBC = _libc()


def available() -> bool:
    """True when this C library has recvmmsg and sendmmsg (Rule 4)."""
    return _LIBC is not None


def _address(of: object) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(of))  # type: ignore[arg-type]


class Batch:
    """Receive slots, send slots and their message headers for one socket and one thread."""

    def __init__(self, sock: socket.socket, size: int = BATCH):
        if _LIBC is None:
            raise OSError(errno.ENOSYS, "recvmmsg is not available")
        if sock.gettimeout() is not None:
            raise ValueError("a Batch needs a blocking socket")  # receive() waits in the C library
        self._fd = sock.fileno()
        self._calls = _LIBC
        self.size = size
        self._in = mmap.mmap(-1, size * MAX_DATAGRAM)  # Rule 1: resident only where written
        self._out = mmap.mmap(-1, size * MAX_DATAGRAM)
        self._inview, self._outview = memoryview(self._in), memoryview(self._out)
        self._names = (ctypes.c_char * (size * NAME_SIZE))()
        self._namesview = memoryview(self._names).cast("B")
        self._txnames_buf = (ctypes.c_char * (size * NAME_SIZE))()  # the answers' destinations
        self._txnamesview = memoryview(self._txnames_buf).cast("B")
        self._rx = (_Mmsghdr * size)()
        self._tx = (_Mmsghdr * size)()
        in_iov, out_iov = (_Iovec * size)(), (_Iovec * size)()
        in_base, out_base = _address(self._in), _address(self._out)
        names, txnames = ctypes.addressof(self._names), ctypes.addressof(self._txnames_buf)
        for i in range(size):
            in_iov[i].iov_base, in_iov[i].iov_len = in_base + i * MAX_DATAGRAM, MAX_DATAGRAM
            out_iov[i].iov_base = out_base + i * MAX_DATAGRAM
            for headers, iov, base in ((self._rx, in_iov, names), (self._tx, out_iov, txnames)):
                hdr = headers[i].msg_hdr
                hdr.msg_iov, hdr.msg_iovlen = ctypes.addressof(iov[i]), 1
                hdr.msg_name, hdr.msg_namelen = base + i * NAME_SIZE, NAME_SIZE
        self._iovs = (in_iov, out_iov)  # kept alive: the headers point into them
        # Word views of the header arrays: a field is one index, no ctypes object per read.
        entry = ctypes.sizeof(_Mmsghdr) // 4
        self._rxwords = memoryview(self._rx).cast("B").cast("I")
        self._txwords = memoryview(self._tx).cast("B").cast("I")
        self._len_at = [i * entry + _Mmsghdr.msg_len.offset // 4 for i in range(size)]
        self._namelen_at = [i * entry + _Msghdr.msg_namelen.offset // 4 for i in range(size)]
        self._outlen = memoryview(out_iov).cast("B").cast("P")
        self._outlen_at = [i * 2 + 1 for i in range(size)]
        # The sources' sockaddr_in (16 bytes) or sockaddr_in6 (28 bytes, V6ONLY sockets): the answers'
        # destinations have that length; an IPv4 source is its first 8 bytes (family, port, address).
        self._v4 = sock.family == socket.AF_INET
        self._names64 = memoryview(self._names).cast("B").cast("Q")
        self._txnames64 = memoryview(self._txnames_buf).cast("B").cast("Q")
        for i in range(size):
            self._txwords[self._namelen_at[i]] = V4_NAME if self._v4 else V6_NAME
        self.peers: dict[int | bytes, tuple] = {}  # source -> (host, port[, flowinfo, scope id]) (Rule 3)
        self._pending = 0  # answers waiting in the send slots
        self.large_bytes = 0  # of the datagrams over SMALL bytes the last `receive` returned

    def receive(self, wait: bool = True, most: int = 0) -> list[tuple[bytes, int | bytes]]:
        """Up to `size` (or `most`) waiting datagrams: (data, source) pairs, where source is what `peer`
        and `answer` take: an int for IPv4 (family, port and address: the first 8 bytes of the
        sockaddr_in), the sockaddr_in6's bytes for IPv6. With `wait`, block until there is one (other
        threads run meanwhile); without, return at once, keeping the GIL (Rule 5). `large_bytes` then
        holds the bytes of those over SMALL.

        Raises OSError as recvfrom would; an empty list means none waited
        (without `wait`) or the socket was shut down.
        """
        words, namelen_at = self._rxwords, self._namelen_at
        most = min(most, self.size) if most > 0 else self.size
        for i in range(most):
            words[namelen_at[i]] = NAME_SIZE  # the kernel wrote the last sources' lengths here
        if wait:
            count = self._calls.recv_wait(self._fd, self._rx, most, MSG_WAITFORONE, None)
        else:
            count = self._calls.recv_now(self._fd, self._rx, most, MSG_DONTWAIT, None)
        if count < 0:
            code = ctypes.get_errno()
            if code == errno.EAGAIN and not wait:
                return []
            raise OSError(code, os.strerror(code))
        view, len_at, large = self._inview, self._len_at, 0
        out: list[tuple[bytes, int | bytes]] = []
        if self._v4:
            names64 = self._names64
            for i in range(count):
                length = words[len_at[i]]
                if length:
                    start = i * MAX_DATAGRAM
                    out.append((view[start:start + length].tobytes(), names64[i * WORDS_PER_NAME]))
                    if length > SMALL:
                        large += length
        else:
            names = self._namesview
            for i in range(count):
                length = words[len_at[i]]
                if length:
                    start, at = i * MAX_DATAGRAM, i * NAME_SIZE
                    out.append((view[start:start + length].tobytes(), names[at:at + V6_NAME].tobytes()))
                    if length > SMALL:
                        large += length
        self.large_bytes = large
        return out

    def peer(self, source: int | bytes) -> tuple:
        """`source` (from `receive`) as socket.recvfrom gives it (Rule 3)."""
        found = self.peers.get(source)
        if found is None:
            found = _decode(source.to_bytes(8, sys.byteorder) if isinstance(source, int) else source)
            if len(self.peers) >= MAX_PEERS:
                self.peers.clear()
            self.peers[source] = found
        return found

    def answer(self, source: int | bytes, data: bytes) -> None:
        """Queue `data` for `source` (from `receive`, Rule 2); `flush` sends it."""
        j = self._pending
        if j == self.size:
            self.flush()
            j = 0
        start = j * MAX_DATAGRAM
        self._outview[start:start + len(data)] = data
        self._outlen[self._outlen_at[j]] = len(data)
        if isinstance(source, int):
            self._txnames64[j * WORDS_PER_NAME] = source  # family, port, address; the rest stays zero
        else:
            at = j * NAME_SIZE
            self._txnamesview[at:at + V6_NAME] = source
        self._pending = j + 1

    def flush(self) -> None:
        """Send the queued answers; one a client cannot take is skipped (UDP has nobody to tell)."""
        sent, pending, send, flags = 0, self._pending, self._calls.send_now, MSG_DONTWAIT
        self._pending = 0
        while sent < pending:
            count = send(self._fd, ctypes.byref(self._tx, sent * ctypes.sizeof(_Mmsghdr)), pending - sent, flags)
            if count <= 0:
                code = ctypes.get_errno()
                if count < 0 and code in (errno.EAGAIN, errno.EINTR):
                    send, flags = self._calls.send_wait, 0  # the send buffer is full: wait, letting others run
                    continue
                sent += 1  # the first of the rest failed (e.g. unreachable): drop it, try the others
            else:
                sent += count


def _decode(raw: bytes) -> tuple:
    family = int.from_bytes(raw[:2], sys.byteorder)
    port = int.from_bytes(raw[2:4], "big")
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
    host = socket.inet_ntop(socket.AF_INET6, raw[8:24])
    scope = int.from_bytes(raw[24:28], sys.byteorder)
    if scope:
        try:
            host = f"{host}%{socket.if_indextoname(scope)}"
        except OSError:
            host = f"{host}%{scope}"
    return host, port, int.from_bytes(raw[4:8], "big"), scope
