"""PingLaneWorker: gunicorn's gthread worker with a lane of its own for `GET /ping`.

gthread hands every connection that has a request waiting to one thread pool (settings.THREADS_PER_WORKER
threads). Under load that pool fills with /invocations waiting for the worker's one prediction at a time
(the lock in app.py), and a /ping queued behind them waits for all of them: seconds once requests are
large or clients many (32 clients sending 1 MiB each kept /ping waiting for seconds; docs/reliability.md),
while SageMaker gives a health check 2 s. Here a connection whose first bytes are `GET /ping` goes to a
pool of PING_THREADS threads that serve nothing else, so /ping answers in milliseconds whatever queues in
the main pool. The bytes are peeked (MSG_PEEK), not read: gunicorn's parser reads the request as usual,
and everything that is not a /ping takes gthread's own path unchanged. A new connection whose request has
not arrived yet waits on the poller, as gthread's deferred connections do, instead of in a pool thread.

This leans on gthread internals of the pinned gunicorn 27 (requirements/: enqueue_req, handle,
finish_request, method_queue, pending_conns, on_pending_socket_readable);
tests/serving/test_worker_faults.py runs the real server under load and fails if an upgrade changes them.
"""

from __future__ import annotations

import selectors
import socket
import time
from concurrent import futures
from functools import partial
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

PING_REQUEST = b"GET /ping"
PING_THREADS = 2   # /ping does no work (readiness.py); two cover a slow client or two


class PingLaneWorker(ThreadWorker):  # type: ignore[misc]
    def init_process(self) -> None:
        self.ping_pool = futures.ThreadPoolExecutor(max_workers=PING_THREADS, thread_name_prefix="ping")
        super().init_process()

    def run(self) -> None:
        try:
            super().run()
        finally:
            self.ping_pool.shutdown(wait=False)

    def enqueue_req(self, conn: Any) -> None:
        """Called on the worker's main thread for every connection with a request to serve (gthread.TConn)."""
        if self.cfg.is_ssl:   # an SSLSocket cannot peek; SageMaker speaks plain HTTP to the container
            super().enqueue_req(conn)
            return
        head = peek(conn.sock, len(PING_REQUEST))
        if head is None and not conn.initialized and not conn.data_ready:
            self._wait_for_request(conn)
        elif head is not None and head.startswith(PING_REQUEST):
            future = self.ping_pool.submit(self.handle, conn)
            future.add_done_callback(lambda done: self.method_queue.defer(self.finish_request, conn, done))
        else:
            super().enqueue_req(conn)

    def _wait_for_request(self, conn: Any) -> None:
        """A connection accepted before its request arrived: wait on the poller (gthread's deferral, as in
        finish_request); it comes back through enqueue_req when readable, or is closed after keepalive."""
        conn.sock.setblocking(False)
        conn.timeout = time.monotonic() + self.cfg.keepalive
        self.pending_conns.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_pending_socket_readable, conn))


def peek(sock: socket.socket, size: int) -> bytes | None:
    """Up to `size` bytes waiting on the socket, left there for the parser; None when none have arrived,
    b"" when the peer has closed or reset it (gthread's handler then sees that and closes the connection)."""
    try:
        return sock.recv(size, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""
