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

It also spreads connections evenly over the workers. Every worker waits on the one listening socket the
master bound, and the first one awake takes whatever is queued: a burst of new keep-alive connections
(wrk's 8 at its start; a front end opening its pool) often all landed on one worker, whose one GIL then
served every request while its sibling idled (issue 10: 1,800 against 4,000 req/s for the same server,
depending only on that draw). Each worker publishes how many connections it holds in a small table shared
through memory the master mapped before forking (ConnectionBoard); a worker holding more than a live
sibling leaves a new connection to it for up to ACCEPT_DEFER_S, then takes it anyway, so a sibling that
is busy, stuck or gone delays a connection by that much at most and never refuses it.

This leans on gthread internals of the pinned gunicorn 27 (requirements/: enqueue_req, handle,
finish_request, method_queue, pending_conns, on_pending_socket_readable, accept, set_accept_enabled,
wait_for_and_dispatch_events, nr_conns); tests/serving/test_worker_faults.py runs the real server under
load and fails if an upgrade changes them.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import selectors
import socket
import struct
import time
from concurrent import futures
from functools import partial
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

PING_REQUEST = b"GET /ping"
PING_THREADS = 2   # /ping does no work (readiness.py); two cover a slow client or two
ACCEPT_DEFER_S = 0.002   # the longest a worker holding more connections leaves a new one to a sibling
SLOTS = 64               # workers the board can track (pid modulo SLOTS); one more than that is not balanced
_SLOT = struct.Struct("=qq")   # (pid, open connections)


class ConnectionBoard:
    """How many connections each worker of this server holds, in anonymous shared memory: made once in the
    master (worker.py is imported there when gunicorn resolves the worker class), inherited by every fork.

    A worker owns the slot pid % SLOTS while its pid is written there; a slot whose pid is dead is free.
    Reads and writes are 8-byte stores without a lock: a count a moment old only moves one accept by at
    most ACCEPT_DEFER_S, so exactness is not worth a lock on every loop turn."""

    def __init__(self, slots: int = SLOTS) -> None:
        self.slots = slots
        self.memory = mmap.mmap(-1, _SLOT.size * slots)

    def claim(self, pid: int) -> bool:
        """The worker's slot, unless a live sibling holds it (then this worker is simply not balanced)."""
        owner, _ = self._read(pid % self.slots)
        if owner not in (0, pid) and _alive(owner):
            return False
        self.publish(pid, 0)
        return True

    def publish(self, pid: int, connections: int) -> None:
        _SLOT.pack_into(self.memory, (pid % self.slots) * _SLOT.size, pid, connections)

    def release(self, pid: int) -> None:
        if self._read(pid % self.slots)[0] == pid:
            _SLOT.pack_into(self.memory, (pid % self.slots) * _SLOT.size, 0, 0)

    def fewest_elsewhere(self, pid: int) -> int | None:
        """The fewest connections a live sibling holds, or None when there is none; clears dead slots."""
        fewest: int | None = None
        for index in range(self.slots):
            owner, connections = self._read(index)
            if owner in (0, pid):
                continue
            if not _alive(owner):
                _SLOT.pack_into(self.memory, index * _SLOT.size, 0, 0)
                continue
            fewest = connections if fewest is None else min(fewest, connections)
        return fewest

    def _read(self, index: int) -> tuple[int, int]:
        owner, connections = _SLOT.unpack_from(self.memory, index * _SLOT.size)
        return int(owner), int(connections)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # someone else's process reuses the pid: not a sibling, but leave it be
        return True
    return True


BOARD = ConnectionBoard()


class PingLaneWorker(ThreadWorker):  # type: ignore[misc]
    board = BOARD

    def init_process(self) -> None:
        self.ping_pool = futures.ThreadPoolExecutor(max_workers=PING_THREADS, thread_name_prefix="ping")
        self.balanced = self.board.claim(os.getpid())
        self.published = 0
        self.accept_paused_until: float | None = None   # waiting for a sibling to take what is queued
        self.accept_forced = False                      # that wait is over: take the next one
        super().init_process()

    def run(self) -> None:
        try:
            super().run()
        finally:
            self.ping_pool.shutdown(wait=False)
            if self.balanced:
                self.board.release(os.getpid())

    def accept(self, listener: Any) -> None:
        """A new connection is queued: take it, unless a live sibling holds fewer connections than this
        worker and this worker has not yet waited ACCEPT_DEFER_S for it to do so."""
        if self.balanced and not self.accept_forced:
            fewest = self.board.fewest_elsewhere(os.getpid())
            if fewest is not None and fewest < self.nr_conns:
                self.accept_paused_until = time.monotonic() + ACCEPT_DEFER_S
                self.set_accept_enabled(False)   # off the poller meanwhile, so the loop does not spin
                return
        self.accept_forced = False
        super().accept(listener)
        self._publish()

    def set_accept_enabled(self, enabled: bool) -> None:
        # gthread's loop re-enables accepting on every turn; a pause holds until its deadline
        if enabled and self.accept_paused_until is not None:
            if time.monotonic() < self.accept_paused_until:
                return
            self.accept_paused_until = None
            self.accept_forced = True
        super().set_accept_enabled(enabled)

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        if self.accept_paused_until is not None:   # wake at the pause's end, not a second later
            timeout = max(0.0, min(timeout, self.accept_paused_until - time.monotonic()))
        super().wait_for_and_dispatch_events(timeout)
        self.accept_forced = False   # the turn after a pause took what was still queued, if anything
        self._publish()   # nr_conns changes in gthread's own callbacks (finish_request, murder_*)

    def _publish(self) -> None:
        if self.balanced and self.nr_conns != self.published:
            self.published = self.nr_conns
            with contextlib.suppress(ValueError):   # the map is closed only at interpreter exit
                self.board.publish(os.getpid(), self.nr_conns)

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
