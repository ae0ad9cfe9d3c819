"""Every contract of Larder in one package: what crosses a process boundary, and how it is written and read.

- :mod:`~pipeline.contracts.models`: the typed models and limits of contracts 1-4 (device payloads, camera hook
  bodies, replay lines, alert records) and of the internal Kafka formats (reading and kitchen-event batches,
  dead letters, annotations, acks, deliveries).
- :mod:`~pipeline.contracts.records`: the one builder and reader of every Kafka record value (the
  ``{"v": 1, "kind": ...}`` batch envelope, ticks, alerts, annotations, acks, deliveries, dead letters).
- :mod:`~pipeline.contracts.replay`: contract 3, the replay file (:class:`Line`), and the ground-truth file
  (:class:`Truth`).

Contract 5, the site file, is :mod:`pipeline.siteconfig`. A change to anything here is a versioned change:
bump the ``v`` field and document it in the README.
"""

from __future__ import annotations

from pipeline.contracts import models, records, replay

__all__ = ["models", "records", "replay"]
