"""The detectors follow the protocols of :mod:`pipeline.detectors.base`: the annotated assignments are checked by
mypy (``make lint`` types the tests), and ``isinstance`` against the runtime-checkable protocols checks at run
time that every member is there."""

from __future__ import annotations

from typing import Any

from pipeline.detectors.base import Detector, SubjectDetector
from pipeline.detectors.device import DeviceDetector, DeviceState
from pipeline.detectors.kitchen import KitchenDetector, KitchenState
from pipeline.detectors.rapidtest import RapidTestDetector, RapidTestState
from pipeline.schemas import KitchenEvent, Reading
from tests.agents_support import ThresholdDetector, ThresholdState

from .helpers import device_rules, kitchen_rules


def test_the_production_detectors_are_full_detectors() -> None:
    device: Detector[DeviceState, Reading] = DeviceDetector(device_rules())
    kitchen: Detector[KitchenState, KitchenEvent] = KitchenDetector(kitchen_rules())
    rapid: Detector[RapidTestState, dict[str, Any]] = RapidTestDetector("S01")  # its events are the dicts
    for detector in (device, kitchen, rapid):
        assert isinstance(detector, Detector), detector


def test_the_runner_needs_only_a_subject_detector() -> None:
    """The tests' threshold detector has no RecordBatch fast path (its concern validates each item into a
    ``Reading``) and no ``wake_ms`` (the runner visits it at every tick): not a full detector, but all the
    runner calls on one."""
    threshold: SubjectDetector[ThresholdState] = ThresholdDetector(subject="dev-1")
    assert isinstance(threshold, SubjectDetector)
    assert not isinstance(threshold, Detector)
