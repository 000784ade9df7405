"""worker.py's connection balancing: the shared board, and when a worker leaves a new connection to a sibling."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import pytest
from gunicorn.workers.gthread import ThreadWorker

from container.serving import worker
from container.serving.worker import ConnectionBoard, PingLaneWorker


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_board_reports_the_fewest_connections_of_live_siblings_only() -> None:
    board = ConnectionBoard(slots=8)
    me, parent, gone = os.getpid(), os.getppid(), dead_pid()
    assert board.claim(me)
    assert board.fewest_elsewhere(me) is None
    board.publish(me, 5)
    board.publish(parent, 3)
    assert board.fewest_elsewhere(me) == 3
    if gone % 8 not in (me % 8, parent % 8):
        board.publish(gone, 0)   # a worker killed outright leaves its slot behind: ignored and cleared
        assert board.fewest_elsewhere(me) == 3
        assert board._read(gone % 8) == (0, 0)
    board.release(me)
    assert board._read(me % 8) == (0, 0)


def test_a_slot_held_by_a_live_sibling_is_not_taken() -> None:
    board = ConnectionBoard(slots=1)
    board.publish(os.getppid(), 2)
    assert not board.claim(os.getpid())
    board.publish(dead_pid(), 2)
    assert board.claim(os.getpid())   # a dead owner's slot is free


class Listener:
    accepted = 0


def make_worker(board: ConnectionBoard, connections: int) -> Any:
    """A PingLaneWorker without gunicorn's set-up: only what accept and its pause read."""
    self: Any = object.__new__(PingLaneWorker)
    self.board, self.balanced, self.published = board, True, connections
    self.accept_paused_until, self.accept_forced, self.nr_conns = None, False, connections
    self.enabled = []
    return self


@pytest.fixture
def gthread(monkeypatch: pytest.MonkeyPatch) -> None:
    def accept(self: Any, listener: Listener) -> None:
        listener.accepted += 1
        self.nr_conns += 1

    monkeypatch.setattr(ThreadWorker, "accept", accept)
    monkeypatch.setattr(ThreadWorker, "set_accept_enabled",
                        lambda self, enabled: self.enabled.append(enabled))


@pytest.mark.usefixtures("gthread")
def test_a_worker_with_more_connections_waits_then_takes_the_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    board = ConnectionBoard(slots=64)
    busy = make_worker(board, connections=4)
    board.publish(os.getpid(), 4)
    board.publish(os.getppid(), 1)   # a live sibling with fewer
    listener = Listener()
    now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])

    busy.accept(listener)
    assert listener.accepted == 0 and busy.enabled == [False]
    busy.set_accept_enabled(True)    # gthread's loop, within the pause: stays off
    assert busy.enabled == [False]
    now[0] += worker.ACCEPT_DEFER_S
    busy.set_accept_enabled(True)    # the pause is over: on again, and the next accept is not refused
    assert busy.enabled == [False, True]
    busy.accept(listener)
    assert listener.accepted == 1 and board._read(os.getpid() % 64)[1] == 5


@pytest.mark.usefixtures("gthread")
def test_a_worker_with_no_more_than_its_siblings_accepts_at_once() -> None:
    board = ConnectionBoard(slots=64)
    board.publish(os.getppid(), 2)
    listener = Listener()
    even = make_worker(board, connections=2)
    even.accept(listener)
    assert listener.accepted == 1 and even.enabled == []
    alone = make_worker(ConnectionBoard(slots=64), connections=9)   # no sibling on the board
    alone.accept(listener)
    assert listener.accepted == 2
