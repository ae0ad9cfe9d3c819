"""Seeded, reproducible simulators of cold rooms, reefer trucks and kitchens, with ground truth.

See docs/simulators.md. Entry point: :func:`simulators.scenarios.build`.
"""

from simulators.core import Line, Scenario, Truth, read_lines, read_truth, write_lines, write_truth
from simulators.scenarios import LIBRARY, build

__all__ = ["LIBRARY", "Line", "Scenario", "Truth", "build", "read_lines", "read_truth", "write_lines", "write_truth"]
