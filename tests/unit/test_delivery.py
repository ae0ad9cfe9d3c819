"""The consumer's quick deliveries (``pipeline.agents.faust.delivery``): a message whose delivery cannot wait is
awaited directly; anything that could wait goes Faust's way (``wait_first`` racing the flow's suspension), and a
full stream queue is waited on once until the streams drained it."""

from __future__ import annotations

import asyncio
import inspect
from types import SimpleNamespace
from typing import Any

from faust.types import TP
from mode.services import WaitResults
from mode.utils.locks import Event
from mode.utils.queues import FlowControlEvent, FlowControlQueue

from pipeline.agents.faust import delivery

TP0 = TP("t.readings", 0)


class Channel:
    """A stream's channel: what the conductor puts events into (its queue)."""

    def __init__(self, queue: FlowControlQueue[Any]) -> None:
        self.queue = queue


class Kit:
    """A consumer and an app with the parts the wrapper reads (mode's own events, flow control and queue)."""

    def __init__(self, maxsize: int = 10) -> None:
        self.flow = FlowControlEvent(initially_suspended=False)
        self.queue: FlowControlQueue[Any] = FlowControlQueue(maxsize=maxsize, flow_control=self.flow)
        self.app = SimpleNamespace(
            flow_control=self.flow,
            topics=SimpleNamespace(_tp_to_callback_lock=asyncio.Lock(), _tp_index={TP0: {Channel(self.queue)}}),
            producer=SimpleNamespace(buffer=SimpleNamespace(size=0, max_messages=100)),
        )
        self.faust_calls: list[tuple[Any, ...]] = []
        self.consumer = SimpleNamespace(
            suspend_flow=Event(), _stopped=Event(), _crashed=Event(), wait_first=self.faust_wait_first
        )
        self.delivered: list[Any] = []
        delivery.install(self.consumer, self.app)

    async def faust_wait_first(self, *coros: Any, timeout: Any = None) -> WaitResults:
        """Faust's way, reduced: the first of the awaitables to finish wins, the others are cancelled."""
        self.faust_calls.append(coros)
        tasks = [asyncio.ensure_future(c) for c in coros]
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        return WaitResults(
            [c for c, t in zip(coros, tasks, strict=True) if t in done], [t.result() for t in done], False
        )

    async def on_message(self, message: Any) -> str:
        """What the conductor's delivery does: wait for the flow, then put the event (waiting if the queue is full)."""
        await self.flow.acquire()
        if self.queue.full():
            await self.queue.put(message)
        else:
            self.queue.put_nowait(message)
        self.delivered.append(message.offset)
        return f"delivered {message.offset}"

    def drain_call(self, offset: int) -> Any:
        """The drain loop's call: ``wait_first(callback(message), suspend_flow.wait())``."""
        message = SimpleNamespace(tp=TP0, offset=offset)
        return self.consumer.wait_first(self.on_message(message), self.consumer.suspend_flow.wait())


async def test_a_delivery_that_cannot_wait_is_awaited_directly() -> None:
    kit = Kit()
    result = await kit.drain_call(7)
    assert kit.delivered == [7] and result.results == ["delivered 7"] and not result.stopped
    assert kit.faust_calls == []  # no tasks, no asyncio.wait


async def test_anything_that_could_wait_goes_fausts_way() -> None:
    kit = Kit()
    kit.flow.suspend()  # a rebalance: the delivery would wait for the flow to resume
    call = asyncio.ensure_future(kit.drain_call(1))
    await asyncio.sleep(0.01)
    assert len(kit.faust_calls) == 1 and kit.delivered == []
    kit.consumer.suspend_flow.set()  # Faust's suspension wins the race, as without the wrapper
    await call
    assert kit.delivered == []

    for hold in ("suspend_flow", "_stopped", "_crashed"):
        kit = Kit()
        getattr(kit.consumer, hold).set()
        await kit.drain_call(2)
        assert len(kit.faust_calls) == 1, hold

    kit = Kit()
    kit.app.producer.buffer.size = 101  # Faust's own producer buffer over its limit: it would flush first
    await kit.drain_call(3)
    assert len(kit.faust_calls) == 1

    kit = Kit()
    other = asyncio.sleep(0)
    await kit.consumer.wait_first(other)  # not the drain's call
    assert kit.faust_calls == [(other,)]


async def test_a_full_queue_is_waited_on_once_until_the_streams_drained_it() -> None:
    kit = Kit(maxsize=10)
    for offset in range(10):
        await kit.drain_call(offset)
    assert kit.queue.full() and kit.faust_calls == []
    call = asyncio.ensure_future(kit.drain_call(10))
    await asyncio.sleep(0.01)
    assert len(kit.faust_calls) == 1 and kit.delivered[-1] == 9  # waiting, interruptibly, for room
    while kit.queue.qsize() > kit.queue.pressure_drop_size:  # the stream takes events one by one
        kit.queue.get_nowait()
        await asyncio.sleep(0.002)
    await call
    assert kit.delivered[-1] == 10 and len(kit.faust_calls) == 1
    for offset in range(11, 15):  # room again: directly, no wait a message
        await kit.drain_call(offset)
    assert len(kit.faust_calls) == 1


async def test_a_suspension_while_the_queue_drains_hands_the_delivery_to_faust() -> None:
    kit = Kit(maxsize=2)
    await kit.drain_call(0)
    await kit.drain_call(1)
    call = asyncio.ensure_future(kit.drain_call(2))
    await asyncio.sleep(0.01)
    kit.consumer.suspend_flow.set()
    await asyncio.sleep(0.01)
    assert len(kit.faust_calls) == 2  # the drain wait gave way, and the delivery went Faust's way
    assert kit.delivered == [0, 1]  # still blocked on the full queue: the suspension decides, as in Faust
    call.cancel()


async def test_a_consumer_stopping_while_the_queue_drains_leaves_no_coroutine_unawaited() -> None:
    kit = Kit(maxsize=1)
    await kit.drain_call(0)
    message = SimpleNamespace(tp=TP0, offset=1)
    deliver, suspended = kit.on_message(message), kit.consumer.suspend_flow.wait()
    call = asyncio.ensure_future(kit.consumer.wait_first(deliver, suspended))
    await asyncio.sleep(0.01)
    call.cancel()
    await asyncio.gather(call, return_exceptions=True)
    # Closed, not left for the garbage collector to report as never awaited.
    assert inspect.getcoroutinestate(deliver) == inspect.getcoroutinestate(suspended) == inspect.CORO_CLOSED
