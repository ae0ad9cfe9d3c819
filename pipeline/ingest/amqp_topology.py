"""What the AMQP bridge and the RabbitMQ cluster must agree on: vhost, queue, exchange, routing keys, ports.

A runtime module (the bridge runs in production and may not import :mod:`pipeline.stack`, the local-stack
installer; tests/unit/test_import_rules.py), so :mod:`pipeline.stack.rabbitmq`, which forms and configures the
local cluster, takes these names and the port layout from here, never the other way round.
"""

from __future__ import annotations

import os

from pipeline.settings import Settings

VHOST = "larder"
QUEUE = "larder.readings"
EXCHANGE = "amq.topic"
#: ``#``, not ``*``: a device id may contain dots (see pipeline.stack.rabbitmq's docstring).
BINDING = "larder.v1.devices.#"
#: Nodes of the local cluster.
NODES = 3
HOST = "127.0.0.1"


def routing_key(device: str) -> str:
    """The AMQP routing key of a device's MQTT readings topic, as the MQTT plugin maps it (``/`` -> ``.``)."""
    return f"larder.v1.devices.{device}.readings"


def base_port(settings: Settings) -> int:
    """``LARDER_RABBITMQ_BASE_PORT`` or, by default, the stack's MQTT port + 10,000 (44883 -> 54883..54912), so
    that every developer's cluster differs."""
    return int(os.environ.get("LARDER_RABBITMQ_BASE_PORT", settings.mqtt.port + 10_000))


# Node n (1-based) uses base + 10 (n - 1) + {0: AMQP, 1: MQTT, 2: Erlang distribution}.
def amqp_port(base: int, n: int) -> int:
    return base + 10 * (n - 1)


def mqtt_port(base: int, n: int) -> int:
    return base + 10 * (n - 1) + 1


def dist_port(base: int, n: int) -> int:
    return base + 10 * (n - 1) + 2


def default_servers(settings: Settings) -> list[str]:
    """``host:port`` of every node's AMQP listener of the local cluster, node 1 first."""
    base = base_port(settings)
    return [f"{HOST}:{amqp_port(base, n)}" for n in range(1, NODES + 1)]
