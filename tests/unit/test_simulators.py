"""Simulators: reproducible, contract-valid output, fast generation, and ground truth the pure detectors meet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeline import serde
from pipeline.contracts.rapidtest import validate_results
from pipeline.schemas import CameraEvent, DeviceReading, ReplayLine
from simulators import LIBRARY, build, read_lines, read_truth, write_lines, write_truth
from simulators import rules as R
from simulators.check import detect
from simulators.core import Line
from simulators.scenarios import parse_duration

SHORT = [n for n in LIBRARY if n not in ("quiet-week", "mass-outage")]


def _dump(name: str, seed: int) -> tuple[bytes, list[dict[str, object]], dict[str, object]]:
    sc = build(name, seed=seed)
    return b"".join(line.dumps() for line in sc.iter_lines()), [t.to_json() for t in sc.truth], sc.config_doc


@pytest.mark.parametrize("name", SHORT)
def test_same_seed_same_everything_other_seed_differs(name: str) -> None:
    assert _dump(name, 7) == _dump(name, 7)
    assert _dump(name, 7)[0] != _dump(name, 8)[0]


@pytest.mark.parametrize("name", list(LIBRARY))
def test_lines_are_contract_3_in_at_order_with_valid_payloads(name: str) -> None:
    sc = build(name, sites=2 if name == "mass-outage" else None, duration_s=86400 if name == "quiet-week" else None)
    lines = list(sc.iter_lines())
    assert lines[-1].kind == "end" and lines[-1].at_ms >= sc.end_ms - 1
    assert [x.at_ms for x in lines] == sorted(x.at_ms for x in lines)
    devices = {d for d, _, _ in sc.config.devices()}
    cameras = {c for c, _, _ in sc.config.cameras()}
    instruments = {i for i, _, _ in sc.config.instruments()}
    seqs: dict[str, list[int]] = {}
    for line in lines[:-1]:
        ReplayLine.model_validate(line.to_json())
        if line.kind == "mqtt":
            assert line.source in devices
            items = line.body.get("readings", [line.body])
            assert 1 <= len(items) <= 1000
            for it in items:
                DeviceReading.model_validate(it)
                seqs.setdefault(line.source, []).append(it["seq"])
        elif line.kind == "rapid_test":
            assert line.source in instruments
            ok, bad = validate_results(serde.dumps(line.body), sc.end_ms, 0)
            assert ok and not bad, bad
        else:
            assert line.source in cameras
            CameraEvent.model_validate(line.body)
    for dev, s in seqs.items():
        if name == "reordered-delivery":  # its QoS 1 redeliveries: the same reading again, as a device does
            assert len(set(s)) < len(s) < 1.2 * len(set(s))
        else:
            assert len(set(s)) == len(s), f"{dev} repeats a seq"


def test_a_quiet_week_is_a_week_of_lines_and_no_truth() -> None:
    # How fast it is generated is not a unit test's business (a loaded CI machine took 22 s): not asserted.
    sc = build("quiet-week")
    n = sum(1 for _ in sc.iter_lines())
    assert n > 40_000  # two sites, two loggers each at 60 s, plus two kitchens, for 7 days
    assert sc.truth == []


@pytest.mark.parametrize("name", list(LIBRARY))
def test_pure_detectors_meet_the_ground_truth(name: str) -> None:
    """Scenario/detector agreement without services: every truth detected within delay + 2 s, no false ones."""
    sc = build(name)
    from pipeline.replay.score import score

    alerts = detect(sc.config, sc.iter_lines(), tick_every_s=60 if name == "quiet-week" else 10)
    result = score(sc.truth, alerts)
    assert not result.misses, [(t.rule, t.subject, t.opened_at_ms) for t in result.misses]
    assert not result.false_positives, [(a.rule, a.subject, a.opened_at) for a in result.false_positives]
    if name != "quiet-week":
        assert sc.truth, "every failure scenario has something to detect"
    for m in result.matches:
        assert m.delay_s is not None and -2 <= m.delay_s <= m.truth.max_delay_s + 2


def test_scenarios_say_what_they_inject() -> None:
    truths = {
        name: {t.rule.rsplit(".", 1)[0] if "hygiene" in t.rule else t.rule for t in build(name).truth} for name in SHORT
    }
    assert truths["compressor-failure"] == {R.HIGH}
    assert R.DOOR in truths["door-left-open"]
    assert truths["stuck-sensor"] == {R.STUCK}
    assert truths["unattended-stove"] == {R.UNATTENDED}
    assert truths["hygiene-burst"] == {R.HYGIENE}
    assert truths["store-and-forward"] == {R.OFFLINE, R.GAP}
    assert {R.OFFLINE, R.GAP} <= truths["truck-coverage-gaps"]
    assert {R.BATTERY, R.OFFLINE} <= truths["dead-battery"]
    assert truths["outage-excursion"] == {R.OFFLINE, R.GAP, R.HIGH}
    assert R.HIGH in truths["reordered-delivery"]
    assert truths["flag-styles"] == {R.DOOR, R.HIGH}
    outage = build("mass-outage")
    assert len({t.subject for t in outage.truth if t.rule == R.HIGH}) == 100


def test_rule_params_follow_the_builtin_chilled_profile() -> None:
    from pipeline.detectors.rules import DeviceRuleSet, KitchenRuleSet
    from pipeline.profiles import BUILTIN_PROFILES

    chilled = BUILTIN_PROFILES["chilled"]
    d, k, p = DeviceRuleSet(), KitchenRuleSet(), R.DEFAULT
    assert p.high_c == chilled["high"]["limit"] and p.low_c == chilled["low"]["limit"]
    assert p.high_delay_s == chilled["high"]["delay_min"] * 60
    assert p.door_delay_s == d.door.warn_min * 60 if d.door.warn_min is not None else False
    assert p.offline_k == d.liveness.offline_k
    assert p.gap_max_s == d.liveness.gap_max_min * 60
    assert p.stuck_after_s == (d.liveness.stuck_min or 0) * 60
    assert p.battery_low == d.liveness.battery_low
    assert (p.door_mask_s, p.defrost_mask_s, p.startup_mask_s) == (
        d.masks.door_max_min * 60,
        d.masks.defrost_max_min * 60,
        d.masks.startup_min * 60,
    )
    assert p.unattended_after_s == k.unattended.warn_min * 60
    assert p.hygiene_dedup_s == k.hygiene.dedup_min * 60
    assert p.min_confidence == k.hygiene.min_confidence


def test_files_round_trip(tmp_path: Path) -> None:
    sc = build("door-left-open")
    lines = list(sc.iter_lines())
    write_lines(tmp_path / "r.jsonl", lines)
    write_truth(tmp_path / "t.jsonl", sc.truth)
    assert list(read_lines(tmp_path / "r.jsonl")) == lines
    assert read_truth(tmp_path / "t.jsonl") == sc.truth


def test_a_bad_replay_line_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    good = Line(1_700_000_000_000, "end").dumps()
    path.write_bytes(good + b"\n" + serde.dumps({"at": "2026-11-22T08:00:00Z", "mqtt": {"device": "d"}}) + b"\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not a contract-3 replay line"):
        list(read_lines(path))


def test_scenario_file_and_errors(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text("scenario: stuck-sensor\nseed: 3\nsites: 2\nduration: 5h\n")
    sc = build(str(f))
    assert len(sc.config.sites) == 2 and sc.end_ms - sc.start_ms == 5 * 3600 * 1000
    with pytest.raises(ValueError, match="unknown scenario"):
        build("no-such-thing")
    assert parse_duration("90s") == 90 and parse_duration("15m") == 900 and parse_duration("7d") == 604800
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("soon")


def test_secrets_are_generated_and_distinct() -> None:
    sc = build("skewed-clock")
    secrets = sc.config.device_secrets()
    assert len(set(secrets.values())) == len(secrets) and all(len(s) >= 16 for s in secrets.values())


@pytest.mark.parametrize("name", ["store-and-forward", "truck-coverage-gaps", "dead-battery", "demo"])
def test_one_offline_alert_per_silence(name: str) -> None:
    """The scorer accepts any number of alerts inside a truth; liveness must not flap: a silence (even one filled
    later by a store-and-forward upload) is exactly one ``liveness.offline`` (one ``liveness.gap`` if long)."""
    sc = build(name)
    alerts = detect(sc.config, sc.iter_lines(), tick_every_s=10)
    for rule in (R.OFFLINE, R.GAP):
        opened = sorted((a.subject, a.opened_at) for a in alerts if a.rule == rule and a.state.value == "open")
        resolved = sorted((a.subject, a.opened_at) for a in alerts if a.rule == rule and a.state.value == "resolved")
        truths = sorted(t.subject for t in sc.truth if t.rule == rule)
        assert sorted(s for s, _ in opened) == truths, (rule, opened)
        assert len(set(resolved)) == len(resolved) and set(resolved) <= set(opened)


def test_an_excursion_inside_an_outage_is_a_retrospective_alert_with_its_true_times() -> None:
    """Issue 25, case 1: the excursion is only in the store-and-forward upload; it becomes coldchain.high with
    the physics' times, marked retrospective with its detection delay; the outage stays one offline alert."""
    sc = build("outage-excursion")
    alerts = detect(sc.config, sc.iter_lines(), tick_every_s=10)
    high = [a for a in alerts if a.rule == R.HIGH]
    assert [a.state.value for a in high] == ["open", "resolved"]
    assert all(a.evidence["retrospective"] and a.evidence["detection_delay_min"] > 60 for a in high)
    (truth,) = [t for t in sc.truth if t.rule == R.HIGH]
    assert truth.resolved_at_ms is not None and high[1].at_ms >= truth.resolved_at_ms
    assert len([a for a in alerts if a.rule == R.OFFLINE and a.state.value == "open"]) == 1
    assert not [a for a in alerts if a.resolved_at == a.opened_at]


def test_reordered_duplicated_delivery_gives_the_in_order_alerts() -> None:
    """Issue 25, case 2: delivered shuffled beyond the allowed lateness with duplicates, the day ends with the
    alerts of the same readings delivered in order, and no record is zero-duration."""
    from pipeline.detectors.history import net_alerts

    sc = build("reordered-delivery")
    shuffled = detect(sc.config, sc.iter_lines(), tick_every_s=10)
    seen: set[int] = set()
    in_order = []
    for x in sorted((x for x in sc.lines if x.kind == "mqtt"), key=lambda x: x.body["seq"]):
        if x.body["seq"] not in seen:
            seen.add(x.body["seq"])
            in_order.append(x)
    # The same readings sent in seq order, no clock: pure event time.
    ordered = detect(sc.config, [Line(i, "mqtt", x.source, x.body) for i, x in enumerate(in_order)], tick_every_s=10)

    def view(alerts: list[Any]) -> set[tuple[str, str, str | None]]:
        return {(a.alert_id, a.state.value, a.resolved_at) for a in net_alerts(alerts).values() if a.rule == R.HIGH}

    assert view(shuffled) == view(ordered) and view(ordered)
    assert not [a for a in shuffled if a.resolved_at == a.opened_at]
