"""A hostile HTTP/2 client on plain sockets: gRPC calls opened and never finished.

Each :class:`StalledConnection` speaks just enough HTTP/2 (RFC 9113) to look like a live,
well-behaved peer: the connection preface, SETTINGS (and the ACK of the server's), PING
answers. Then it opens ``Check`` streams and leaves them hanging: every even-numbered one
sends its HEADERS and no DATA at all, every odd-numbered one also sends the first bytes of
a gRPC message whose length prefix promises more. Neither ever ends its stream.

The headers are HPACK "literal header field without indexing, new name" representations
(RFC 7541, section 6.2.2) with plain (not Huffman) strings: no table state to keep.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import struct
import threading
from types import TracebackType
from typing import Final, Self

__all__ = ["CHECK_PATH", "StalledConnection", "StalledStreams", "hpack_literal"]

CHECK_PATH: Final = "/envoy.service.auth.v3.Authorization/Check"
PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7
ACK: Final = 0x1  # on SETTINGS and PING
END_STREAM: Final = 0x1
END_HEADERS: Final = 0x4
_FRAME_HEADER = struct.Struct(">3sBBI")  # 24-bit length, type, flags, R bit + stream id

# A gRPC message prefix: not compressed, 1,000 bytes to follow; only 10 of them ever come.
PARTIAL_MESSAGE: Final = b"\x00" + struct.pack(">I", 1000) + b"\x0a\x08" + b"x" * 8


def hpack_integer(value: int, prefix_bits: int, first_byte: int = 0) -> bytes:
    """An HPACK integer with an N-bit prefix (RFC 7541, section 5.1)."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first_byte | value])
    encoded = bytearray([first_byte | limit])
    value -= limit
    while value >= 0x80:
        encoded.append(0x80 | (value & 0x7F))
        value >>= 7
    encoded.append(value)
    return bytes(encoded)


def _hpack_string(text: str) -> bytes:
    raw = text.encode("ascii")
    return hpack_integer(len(raw), 7) + raw  # H bit 0: the octets as they are


def hpack_literal(name: str, value: str) -> bytes:
    """One header as a literal without indexing, with a new (literal) name."""
    return b"\x00" + _hpack_string(name) + _hpack_string(value)


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return _FRAME_HEADER.pack(len(payload).to_bytes(3, "big"), kind, flags, stream) + payload


class StalledConnection:
    """One TCP connection holding ``streams`` unfinished Check calls.

    A reader thread answers the server's SETTINGS and PINGs and records what the server
    does to the streams (a RST_STREAM, response HEADERS, a GOAWAY, the connection closing).
    """

    def __init__(self, host: str, port: int, streams: int) -> None:
        self.host, self.port, self.streams = host, port, streams
        self.stream_ids = [1 + 2 * n for n in range(streams)]  # client streams: odd ids
        self.reset: set[int] = set()  # streams the server reset
        self.answered: set[int] = set()  # streams the server sent HEADERS on
        self.goaway = False
        self.closed = False
        self._acked: set[bytes] = set()
        self._changed = threading.Condition()
        self._send_lock = threading.Lock()
        self._pings = itertools.count(1)
        self._sock: socket.socket | None = None
        self._reader = threading.Thread(target=self._read, name="stalled-h2", daemon=True)

    def open(self) -> None:
        """Connect, send the preface and every stream's HEADERS (and partial DATA)."""
        self._sock = socket.create_connection((self.host, self.port), timeout=10)
        self._sock.settimeout(None)
        # The preface first: the reader may answer the server's SETTINGS at once.
        self._send(PREFACE + frame(SETTINGS, 0, 0))
        self._reader.start()
        headers = b"".join(
            hpack_literal(name, value)
            for name, value in (
                (":method", "POST"),
                (":scheme", "http"),
                (":path", CHECK_PATH),
                (":authority", f"{self.host}:{self.port}"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            )
        )
        out = bytearray()
        for number, stream in enumerate(self.stream_ids):
            out += frame(HEADERS, END_HEADERS, stream, headers)
            if number % 2:
                out += frame(DATA, 0, stream, PARTIAL_MESSAGE)
        self._send(bytes(out))

    @property
    def open_streams(self) -> int:
        """Streams still open as far as this client knows (none once the connection is gone)."""
        with self._changed:
            if self.goaway or self.closed:
                return 0
            return self.streams - len(self.reset | self.answered)

    def round_trip(self, timeout: float) -> bool:
        """PING the server and wait for its ACK: True once the server has read everything
        sent before it (frames are processed in order), False if no ACK came in time."""
        payload = next(self._pings).to_bytes(8, "big")
        try:
            self._send(frame(PING, 0, 0, payload))
        except OSError:
            return False
        with self._changed:
            self._changed.wait_for(lambda: payload in self._acked or self.closed, timeout)
            return payload in self._acked

    def _send(self, data: bytes) -> None:
        assert self._sock is not None
        with self._send_lock:
            self._sock.sendall(data)

    def _read(self) -> None:
        assert self._sock is not None
        buffer = b""
        try:
            while True:
                chunk = self._sock.recv(65536)
                if not chunk:
                    break
                buffer += chunk
                buffer = self._frames(buffer)
        except OSError:
            pass
        with self._changed:
            self.closed = True
            self._changed.notify_all()

    def _frames(self, buffer: bytes) -> bytes:
        while len(buffer) >= _FRAME_HEADER.size:
            length_bytes, kind, flags, stream = _FRAME_HEADER.unpack_from(buffer)
            length = int.from_bytes(length_bytes, "big")
            end = _FRAME_HEADER.size + length
            if len(buffer) < end:
                break
            self._on_frame(kind, flags, stream & 0x7FFF_FFFF, buffer[_FRAME_HEADER.size : end])
            buffer = buffer[end:]
        return buffer

    def _on_frame(self, kind: int, flags: int, stream: int, payload: bytes) -> None:
        if kind == SETTINGS and not flags & ACK:
            self._send(frame(SETTINGS, ACK, 0))
        elif kind == PING and not flags & ACK:
            self._send(frame(PING, ACK, 0, payload))
        with self._changed:
            if kind == PING and flags & ACK:
                self._acked.add(payload)
            elif kind == RST_STREAM:
                self.reset.add(stream)
            elif kind == HEADERS and stream:
                self.answered.add(stream)
            elif kind == GOAWAY:
                self.goaway = True
            self._changed.notify_all()

    def close(self) -> None:
        if self._sock is None:
            return
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        if self._reader.is_alive():
            self._reader.join(timeout=5)


class StalledStreams:
    """``connections`` x ``streams`` unfinished Check calls to ``host:port``, held until exit."""

    def __init__(self, host: str, port: int, *, connections: int, streams: int) -> None:
        self.host, self.port = host, port
        self.connections = [StalledConnection(host, port, streams) for _ in range(connections)]

    @property
    def open_streams(self) -> int:
        return sum(connection.open_streams for connection in self.connections)

    def held(self, timeout: float = 5.0) -> bool:
        """True when every connection is alive and has had all its streams read by the
        server, and the server has neither answered nor reset any of them."""
        alive = all(connection.round_trip(timeout) for connection in self.connections)
        return alive and self.open_streams == sum(c.streams for c in self.connections)

    def __enter__(self) -> Self:
        try:
            for connection in self.connections:
                connection.open()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for connection in self.connections:
            connection.close()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
