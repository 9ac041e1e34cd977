"""A real TCP proxy that a test can cut and restore: an outage of whatever is behind it, as real processes see it.

While cut, the proxy's port refuses connections and every connection through it is closed, the way a restarting
database server looks to its clients. While held, connections stay open and are accepted, but nothing crosses the
proxy: a peer that stopped answering mid-command; what was sent meanwhile is dropped by the next cut (it never
arrives).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

from conveyor.ops.redis_server import free_port


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``upstream``. :meth:`cut` and :meth:`restore` take it down and up."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = free_port()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._flowing = threading.Event()
        self._flowing.set()

    def hold(self) -> None:
        """Keep everything either side sends from reaching the other, until :meth:`release` (or :meth:`cut`, which
        drops it)."""
        self._flowing.clear()

    def release(self) -> None:
        """Let data cross the proxy again (what was held goes on, in order)."""
        self._flowing.set()

    def restore(self) -> None:
        """Listen again (on the same port) and forward new connections."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True, name="proxy-accept").start()

    def cut(self) -> None:
        """Stop listening (new connections are refused) and close every open connection."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            sockets, self._open = self._open, set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._flowing.set()  # a pump holding data wakes and finds its target closed: the data is dropped

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._open.update((client, server))
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True, name="proxy-pump").start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                self._flowing.wait()
                target.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                target.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._open.discard(source)
            source.close()


@contextlib.contextmanager
def tcp_proxy(upstream: tuple[str, int]) -> Iterator[TcpProxy]:
    proxy = TcpProxy(upstream)
    proxy.restore()
    try:
        yield proxy
    finally:
        proxy.cut()
