"""Faust's hand-over of each fetched message to the streams, without four asyncio tasks a message when nothing
can make it wait.

faust-streaming 0.15.3 delivers every message with
``await consumer.wait_first(callback(message), consumer.suspend_flow.wait())`` (``Consumer._drain_messages``):
mode's ``Service.wait_first`` wraps the delivery, the flow-suspension wait and the service's "stopped" and
"crashed" waits in four tasks, waits for the first with ``asyncio.wait`` and cancels the other three. The race
is there for a delivery that blocks (the stream's queue full, flow control suspended for a rebalance, Faust's
producer buffer over its limit): a suspension must not wait for it. With one reading a message that machinery
was the largest part of the worker: py-spy on the worker's main thread (one reading a message,
``benchmarks.detection --per-record 1``) put ``wait_first`` and ``asyncio.wait`` at 23 % of its samples and
the event loop's stepping of those tasks at another 16 %, against 9 % for the detection stage itself.

The delivery (the conductor's ``on_message``) only waits when one of those conditions holds; otherwise it
runs to its end without giving the event loop a turn, and inside ``wait_first`` it would have done exactly
that in its task's first step. So when none holds, and the flow is neither suspended nor the consumer stopped
or crashed, the delivery is awaited directly and the suspension wait is closed unstarted; any other call goes
to Faust's ``wait_first`` unchanged. Nothing else can run between the checks and the delivery (no await in
between), so a condition cannot change on the way.

A full stream queue is the usual case whenever the worker falls behind (a backlog, or more input than it
can take): then every delivery would wait for one free slot, four tasks each, and most messages would still
go Faust's way. So when a full queue is all that stands in the way, the drain waits once, through Faust's own
``wait_first`` (a suspension still interrupts it), until the streams have taken the queue down to the level
where Faust resumes fetching a partition it paused for a full buffer; the messages after that are delivered
directly again.
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust
from mode.services import WaitResults

from pipeline.agents.faust.consumers import on_every_consumer

#: How often a full stream queue is looked at while it drains (:func:`_drained`).
DRAIN_POLL_S = 0.001


def quick_deliveries(app: faust.App) -> None:
    """Install :func:`install` on every consumer ``app`` creates."""
    on_every_consumer(app, lambda consumer: install(consumer, app))


def install(consumer: Any, app: Any) -> None:
    """Wrap ``consumer.wait_first``: a delivery that cannot wait is awaited directly, and one that would wait
    for room in a full stream queue first waits, once, for the streams to drain it (see the module)."""
    wait_first = consumer.wait_first
    suspend = consumer.suspend_flow
    stopped, crashed = consumer._stopped, consumer._crashed
    suspend_wait = type(suspend).wait.__code__
    flow = app.flow_control
    conductor = app.topics
    lock = conductor._tp_to_callback_lock
    channels = conductor._tp_index

    def held() -> bool:
        buffer = app.producer.buffer
        return (
            suspend.is_set()
            or stopped.is_set()
            or crashed.is_set()
            or not flow.is_active()
            or lock.locked()
            or buffer.size > buffer.max_messages
        )

    async def first(*coros: Any, timeout: Any = None) -> WaitResults:
        # The drain loop's call: (the delivery of a message, the wait for this consumer's flow suspension).
        if len(coros) == 2 and timeout is None and _is_call(coros[1], suspend_wait, suspend):
            deliver, suspended = coros
            message = _argument(deliver, "message")
            if message is not None:
                queues = [channel.queue for channel in channels.get(message.tp, ())]
                if not held() and any(queue.full() for queue in queues):
                    # While the streams' queue is full every delivery would wait for one free slot, with four
                    # tasks each: wait once (as interruptibly as Faust's own wait) until they took a good part.
                    try:
                        await wait_first(_drained(queues), suspend.wait())
                    except BaseException:  # the consumer stopping: neither coroutine will run now
                        deliver.close()
                        suspended.close()
                        raise
                if not held() and not any(queue.full() for queue in queues):
                    suspended.close()  # never started: nothing to cancel
                    return WaitResults([deliver], [await deliver], False)
        return await wait_first(*coros, timeout=timeout)

    consumer.wait_first = first


def _is_call(coro: Any, code: Any, self: Any) -> bool:
    """Whether ``coro`` is a call of the method whose code is ``code`` on ``self``, not yet started."""
    return getattr(coro, "cr_code", None) is code and _argument(coro, "self") is self


def _argument(coro: Any, name: str) -> Any:
    """The argument ``name`` of a coroutine not yet started (None if it is not one)."""
    frame = getattr(coro, "cr_frame", None)
    return None if frame is None else frame.f_locals.get(name)


async def _drained(queues: list[Any]) -> None:
    """Until every queue is down to its pressure-drop size (where Faust resumes fetching a partition it paused
    for a full buffer). Polled: the streams take events one by one and signal nothing on the way down."""
    while any(queue.qsize() > queue.pressure_drop_size for queue in queues):
        await asyncio.sleep(DRAIN_POLL_S)
