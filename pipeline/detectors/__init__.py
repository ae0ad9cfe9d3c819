"""Pure detectors: ``(state, event, now) -> (state, outputs)``. No I/O, no wall clock, no Faust.

The same functions run in the live Faust agents, in replay, in the simulators' ground-truth checks and in the
benchmarks. See :mod:`pipeline.detectors.base` for the protocol every detector follows.
"""
