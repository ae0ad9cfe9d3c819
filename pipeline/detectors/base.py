"""The protocol every detector follows, and the output type they share.

A detector is a value object holding its (frozen) configuration, with pure functions:

* ``initial()`` -> a fresh state for one subject (a device, a kitchen);
* ``on_event(state, event, now_ms)`` -> ``(state, outputs)`` for one reading or camera event;
* ``on_item(state, item, now_ms)``: the same for a RecordBatch item (a plain dict), the runner's hot path;
* ``on_tick(state, now_ms)`` -> ``(state, outputs)`` when time passes with no event (timers);
* ``wake_ms(state)``: when ``on_tick`` next has work, so the runner visits only subjects that are due.

Rules:

* State is an immutable, serialisable value (a frozen dataclass or pydantic model made of plain values) so
  the agent can compare ``new is old`` to skip a table write when nothing changed, and store it in a Faust
  table changelog (``state_to_bytes`` / ``state_from_bytes``).
* Everything is in event time: alert times are the event time at which the condition's deadline was met
  (e.g. ``opened_at = breach_start + delay``), never ``now_ms`` itself. ``now_ms`` only decides *whether* a
  deadline has passed. Hence a timer that runs late, or a replay at any speed, gives identical outputs.
* ``on_event`` first brings the state up to the event's time (firing any deadline that passed before it), so
  the outputs do not depend on whether a tick happened to arrive between two events.
* Outputs are :class:`pipeline.schemas.Alert` (lifecycle ``open``/``resolved``, deterministic ids from
  :func:`pipeline.schemas.alert_id`) and :class:`pipeline.schemas.Annotation` (masked intervals, gaps, late
  data), in event-time order.
"""

from __future__ import annotations

from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from pipeline.schemas import Alert, Annotation

Output = Alert | Annotation
S = TypeVar("S")
E_contra = TypeVar("E_contra", contravariant=True)


@runtime_checkable
class SubjectDetector(Protocol, Generic[S]):
    """What :class:`pipeline.agents.core.Runner` itself calls on a subject's detector. Events reach the detector
    through its ``Concern.on_item``, and ``wake_ms`` is optional there: the runner looks it up on the detector's
    class and visits a subject whose detector has none on every tick."""

    def initial(self) -> S: ...

    def on_tick(self, state: S, now_ms: int) -> tuple[S, list[Output]]: ...

    def state_to_bytes(self, state: S) -> bytes: ...

    def state_from_bytes(self, data: bytes) -> S: ...


@runtime_checkable
class Detector(SubjectDetector[S], Protocol[S, E_contra]):
    """A production detector: what the runner calls (:class:`SubjectDetector`), its RecordBatch fast path and
    timer index included, and what tests and simulators call besides. Implemented by
    :class:`~pipeline.detectors.device.DeviceDetector`, :class:`~pipeline.detectors.kitchen.KitchenDetector` and
    :class:`~pipeline.detectors.rapidtest.RapidTestDetector` on the shared machinery of
    :mod:`pipeline.detectors.engine`."""

    name: str

    def on_event(self, state: S, event: E_contra, now_ms: int) -> tuple[S, list[Output]]:
        """One typed event (a ``schemas.Reading`` / ``KitchenEvent``)."""
        ...

    def on_item(self, state: S, item: dict[str, Any], now_ms: int) -> tuple[S, list[Output]]:
        """One RecordBatch item (a plain dict, no pydantic): the runner's hot path. Raises ``ValueError`` on an
        item of the wrong types (the runner dead-letters it)."""
        ...

    def wake_ms(self, state: S) -> int | None:
        """The earliest ``now_ms`` at which :meth:`on_tick` can change ``state`` (``None``: not before the next
        event); the runner's timer index visits the subject only then."""
        ...
