"""The faust-streaming adapter of `larder worker`: everything that knows Faust, and nothing else does.

The detection itself is Faust-free (:mod:`pipeline.agents.core`: the runner, its concerns, and the state store
and outputs it needs as small protocols). This package runs it as Faust agents over changelogged tables and
holds the workarounds faust-streaming 0.15.3 needs (docs/agents.md):

- :mod:`~pipeline.agents.faust.app`: the app, one agent and one table per concern, live ticks, coalesced
  table writes (``make_app``);
- :mod:`~pipeline.agents.faust.continuity`: the ack gate (Faust acks events its streams skip around a
  rebalance) and the rewind of partitions whose fetch position ran past records the agent never received;
- :mod:`~pipeline.agents.faust.changelog`: table writes as one Kafka record batch per partition flush.
"""

from __future__ import annotations
