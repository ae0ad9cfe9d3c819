"""The delivery ledger: the deliveries topic, folded. It is what makes a notification go out once.

Protocol (records are :class:`pipeline.schemas.Delivery`, keyed by message id, written with acks=all):

1. ``planned`` -- written *before* the first send. It fixes the message id (the idempotency key), the text
   (with its ack link) and the notification keys ``<alert>|<step>|<recipient>`` it covers. From this moment
   those keys are never planned again, by this process or by a restarted one.
2. ``attempt`` -- one per try: channel, status (``ok``/``retry``/``error``), HTTP status, latency, error.
3. ``delivered`` or ``failed`` -- closes the message.

A notifier that starts folds the topic: keys of every planned message are done; a planned message without a
closing record was in flight when the last process stopped and is resumed with the same id and text.

Guarantee: exactly one message per (alert, step, recipient) reaches a gateway that honours the idempotency key
(``Idempotency-Key`` header / ``id`` in the body; signed webhooks carry it too). A gateway that does not
de-duplicate (Twilio's create-message call, DingTalk and WeCom robots) can receive one duplicate in one case
only: the process dies after the gateway accepted the message and before ``delivered`` was recorded.
Retries after a 5xx or a timeout are not duplicates for the gateways we know (the request was refused); a
gateway that acts on a request and then answers 5xx can duplicate on any HTTP retry, idempotency key aside.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.schemas import Delivery


@dataclass
class Ledger:
    planned: dict[str, Delivery] = field(default_factory=dict)
    closed: dict[str, Delivery] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)
    #: Planned messages with no closing record yet, kept as records arrive: the notifier asks at every tick, and
    #: ``planned`` holds every message ever sent.
    open: dict[str, Delivery] = field(default_factory=dict)

    def apply(self, record: Delivery) -> None:
        mid = record.message_id
        if record.kind == "planned":
            self.planned.setdefault(mid, record)
            if mid not in self.closed:
                self.open.setdefault(mid, record)
        elif record.kind == "attempt":
            self.attempts[mid] = max(self.attempts.get(mid, 0), record.attempt or 0)
        else:
            self.closed.setdefault(mid, record)
            self.open.pop(mid, None)

    def in_flight(self) -> list[Delivery]:
        """Planned messages with no closing record, oldest first."""
        return sorted(self.open.values(), key=lambda d: (d.at_ms, d.message_id))

    def alerts_in_flight(self) -> set[str]:
        """Ids of the alerts in messages planned and not yet closed."""
        return {aid for d in self.open.values() for aid in d.alert_ids}

    def delivered(self, message_id: str) -> bool:
        rec = self.closed.get(message_id)
        return rec is not None and rec.kind == "delivered"
