"""A slowloris on plain sockets: HTTP/1.1 connections that send half a request head, then
nothing. The tests and ``bench`` hold them against the HTTP ext_authz listener."""

from __future__ import annotations

import socket
from types import TracebackType
from typing import Self

__all__ = ["HalfOpenConnections"]


class HalfOpenConnections:
    """``count`` connections to ``host:port``, each sent half a request head; held until exit."""

    def __init__(self, host: str, port: int, count: int) -> None:
        self.host, self.port, self.count = host, port, count
        self.sockets: list[socket.socket] = []

    def __enter__(self) -> Self:
        try:
            for index in range(self.count):
                sock = socket.create_connection((self.host, self.port), timeout=5)
                self.sockets.append(sock)
                sock.sendall(f"POST /eth/p{index} HTTP/1.1\r\nhost: authz\r\nContent-Le".encode())
        except BaseException:
            self.close()
            raise
        return self

    def still_open(self) -> int:
        """How many the server has neither answered nor closed (it closes a request that is
        not complete 10 s after its first byte)."""
        count = 0
        for sock in self.sockets:
            sock.setblocking(False)
            try:
                sock.recv(1, socket.MSG_PEEK)  # b"": closed; bytes: answered
            except BlockingIOError:
                count += 1  # nothing to read: still waiting, as a held connection does
            except OSError:
                pass  # reset
            finally:
                sock.setblocking(True)
        return count

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
