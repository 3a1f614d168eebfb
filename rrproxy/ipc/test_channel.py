"""The channel over a real socketpair (cheap, so no mock): fds travel, order holds,
garbage and truncation are detected and every received fd is closed."""

from __future__ import annotations

import array
import os
import socket

import pytest
import trio
import trio.testing

from .channel import ChannelClosed, WorkerChannel, socketpair
from .codec import encode
from .messages import Hello, NewConn, NewConns, ProtocolError, Stats, Taken


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_message_and_fd_round_trip() -> None:
    a, b = socketpair()
    front, worker = WorkerChannel(a), WorkerChannel(b)
    left, right = socket.socketpair()
    assert front.try_send(NewConn(42), [left.fileno()])
    message, (fd,) = await worker.receive()
    assert message == NewConn(42)
    assert fd is not None and fd != left.fileno()
    with socket.socket(fileno=fd) as received:
        received.sendall(b"through the passed fd")
        assert right.recv(100) == b"through the passed fd"
    for s in (left, right):
        s.close()
    front.close()
    worker.close()


async def test_order_is_kept_when_the_peer_is_slow() -> None:
    a, b = socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    front, worker = WorkerChannel(a), WorkerChannel(b)
    received: list[int] = []

    async def reader() -> None:
        while len(received) < 2000:
            message, _ = await worker.receive()
            assert isinstance(message, Taken)
            received.append(message.conn_id)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        for i in range(2000):
            await front.send(Taken(i, 0))
    assert received == list(range(2000))
    front.close()
    worker.close()


async def test_send_nowait_queues_in_order_when_full() -> None:
    a, b = socketpair()
    front, worker = WorkerChannel(a), WorkerChannel(b)
    results = [front.send_nowait(Taken(i, 0)) for i in range(5000)]
    assert False in results  # the socket filled up at some point
    assert not front.try_send(Taken(99999, 0))  # no overtaking the queue
    got: list[int] = []

    async with trio.open_nursery() as nursery:
        nursery.start_soon(front.flush)
        while len(got) < 5000:
            message, _ = await worker.receive()
            assert isinstance(message, Taken)
            got.append(message.conn_id)
    assert got == list(range(5000))
    front.close()
    worker.close()


async def test_eof_is_channel_closed() -> None:
    a, b = socketpair()
    worker = WorkerChannel(b)
    a.close()
    with pytest.raises(ChannelClosed):
        await worker.receive()
    with pytest.raises(ChannelClosed):
        worker.try_send(Taken(1, 0))
    worker.close()


async def test_garbage_and_unexpected_fds_are_rejected_and_closed() -> None:
    a, b = socketpair()
    worker = WorkerChannel(b)
    a.send(b"\xfe garbage")
    with pytest.raises(ProtocolError, match="unknown message tag"):
        await worker.receive()
    # A message that must not carry an fd, with one: refused, and the fd closed.
    before = _open_fds()
    extra_a, extra_b = socket.socketpair()
    a.sendmsg(
        [encode(Stats(1, 1, 1))],
        [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [extra_a.fileno()]))],
    )
    with pytest.raises(ProtocolError, match="arrived with 1 fds"):
        await worker.receive()
    assert _open_fds() == before + 2  # just extra_a/extra_b: the received copy is gone
    # NewConn without its fd.
    a.send(encode(NewConn(3)))
    with pytest.raises(ProtocolError, match="arrived with 0 fds"):
        await worker.receive()
    # The channel still works afterwards.
    a.send(encode(Hello(1, 2)))
    assert (await worker.receive())[0] == Hello(1, 2)
    for s in (a, extra_a, extra_b):
        s.close()
    worker.close()


async def test_too_many_fds_is_ctrunc_and_nothing_leaks() -> None:
    a, b = socketpair()
    worker = WorkerChannel(b)
    pairs = [socket.socketpair() for _ in range(200)]
    fds = array.array("i", [p[0].fileno() for p in pairs])
    before = _open_fds()
    a.sendmsg([encode(NewConn(1))], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
    with pytest.raises(ProtocolError, match="MSG_CTRUNC"):
        await worker.receive()
    assert _open_fds() == before
    for pair in pairs:
        for s in pair:
            s.close()
    a.close()
    worker.close()


async def test_a_batch_of_fds_arrives_in_order() -> None:
    a, b = socketpair()
    front, worker = WorkerChannel(a), WorkerChannel(b)
    pairs = [socket.socketpair() for _ in range(5)]
    assert front.try_send(NewConns((1, 2, 3, 4, 5)), [left.fileno() for left, _ in pairs])
    message, fds = await worker.receive()
    assert message == NewConns((1, 2, 3, 4, 5)) and len(fds) == 5
    for fd, (_, right) in zip(fds, pairs, strict=True):
        with socket.socket(fileno=fd) as received:
            received.sendall(b"x")
            assert right.recv(1) == b"x"
    for left, right in pairs:
        left.close()
        right.close()
    front.close()
    worker.close()


async def test_a_refused_try_send_is_remembered_until_the_socket_has_room() -> None:
    a, b = socketpair()
    front, worker = WorkerChannel(a), WorkerChannel(b)
    rooms: list[float] = []
    front.on_room = lambda: rooms.append(trio.current_time())
    sent = 0
    while front.try_send(Taken(sent, 0)):
        sent += 1
    assert front.backlog_bytes == 0  # nothing queued: the socket itself is full
    refused_at = front.refused_since
    assert refused_at is not None and front.blocked_since == refused_at
    assert not front.try_send(Taken(0, 0))
    assert front.refused_since == refused_at  # since the first refusal
    async with trio.open_nursery() as nursery:
        nursery.start_soon(front.run_flusher)
        await trio.sleep(0.05)
        assert rooms == []  # the peer has read nothing yet
        for _ in range(sent):
            await worker.receive()
        with trio.fail_after(5):
            while not rooms:
                await trio.sleep(0.01)
        assert front.refused_since is None and front.blocked_since is None
        assert front.try_send(Taken(1, 0))
        nursery.cancel_scope.cancel()
    assert len(rooms) == 1
    front.close()
    worker.close()


def _fill(channel: WorkerChannel, count: int = 5000) -> None:
    results = [channel.send_nowait(Taken(i, 0)) for i in range(count)]
    assert False in results  # the socket filled up: the rest is queued


async def _receive_all(channel: WorkerChannel, count: int) -> list[int]:
    got: list[int] = []
    with trio.fail_after(10):
        while len(got) < count:
            message, _ = await channel.receive()
            assert isinstance(message, Taken)
            got.append(message.conn_id)
    return got


async def test_a_send_cancelled_while_it_flushes_leaves_the_rest_to_the_flusher() -> None:
    # The worker's handlers call send(); its run_flusher returns at once while a
    # send() flushes. If that send is cancelled, the flusher must take over, not wait
    # for the next message to be queued.
    a, b = socketpair()
    front, worker = WorkerChannel(a), WorkerChannel(b)
    _fill(front)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(front.run_flusher)
        with trio.move_on_after(0.05):
            await front.send(Taken(5000, 0))  # flushes, waiting: nobody reads yet
        assert front.backlog_bytes > 0
        assert await _receive_all(worker, 5001) == list(range(5001))
        nursery.cancel_scope.cancel()
    front.close()
    worker.close()


async def test_drain_waits_for_what_another_task_is_flushing() -> None:
    a, b = socketpair()
    front, worker = WorkerChannel(a), WorkerChannel(b)
    _fill(front)
    drained = False
    async with trio.open_nursery() as nursery:
        nursery.start_soon(front.run_flusher)
        await trio.testing.wait_all_tasks_blocked()  # the flusher is mid-flush

        async def drain() -> None:
            nonlocal drained
            await front.drain()
            drained = True

        nursery.start_soon(drain)
        await trio.testing.wait_all_tasks_blocked()
        await front.flush()  # what the worker's stop did: returns at once
        assert not drained
        assert await _receive_all(worker, 5000) == list(range(5000))
        with trio.fail_after(5):
            while not drained:
                await trio.sleep(0.01)
        assert front.backlog_bytes == 0
        nursery.cancel_scope.cancel()
    front.close()
    worker.close()
