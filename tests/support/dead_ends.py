"""Caches that fail the slow way, on real sockets: one that accepts connections and never
answers (a stalled server), one whose connects never complete (a blackholed address)."""

from __future__ import annotations

import contextlib
import socket
import threading


class Stalled:
    """A TCP server that accepts every connection and never answers a byte."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


class Blackhole:
    """A listening socket whose accept queue is full and never drained: the kernel drops new
    SYNs, so a connect hangs until the client's own connect timeout (a firewalled address)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.fillers: list[socket.socket] = []
        for _ in range(4):  # fill the accept queue; later connects get no answer
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", self.port))
            self.fillers.append(s)

    def hangs(self, timeout: float = 0.3) -> bool:
        """True when a fresh connect does not complete within ``timeout``."""
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=timeout).close()
        except TimeoutError:
            return True
        except OSError:
            return False
        return False

    def close(self) -> None:
        for s in self.fillers:
            s.close()
        self.sock.close()
