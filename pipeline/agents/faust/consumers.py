"""What Larder changes in Faust's consumers is installed on each one as the app makes it.

Faust makes its consumer lazily (``App._new_consumer``, on the first use of ``app.consumer``), after Larder has
built the app: there is no consumer to change yet, so each change is a function run on the consumer as it is made.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import faust


def on_every_consumer(app: faust.App, install: Callable[[Any], None]) -> None:
    """Run ``install(consumer)`` on every consumer ``app`` makes from now on, before Faust starts it."""
    new_consumer = app._new_consumer

    def new_consumer_installed() -> Any:
        consumer = new_consumer()
        install(consumer)
        return consumer

    app._new_consumer = new_consumer_installed  # type: ignore[method-assign]
