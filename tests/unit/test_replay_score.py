"""The scorer (precision, recall, detection delay), the timeline order and the hook signature: pure functions."""

from __future__ import annotations

import hashlib
import hmac

from pipeline.replay.score import score
from pipeline.replay.send import _reading_keys, sign
from pipeline.replay.timeline import identity, sort_alerts, timeline_jsonl
from pipeline.schemas import Alert, AlertState, Severity, alert_id, ms_to_iso
from simulators.core import Truth

T0 = 1_795_305_600_000
MIN = 60_000


def alert(rule: str, subject: str, opened: int, state: str = "open", at: int | None = None, site: str = "S1") -> Alert:
    return Alert(
        alert_id=alert_id(rule, subject, opened),
        rule=rule,
        severity=Severity.WARNING,
        site=site,
        subject=subject,
        state=AlertState(state),
        opened_at=ms_to_iso(opened),
        resolved_at=ms_to_iso(at) if state == "resolved" and at is not None else None,
        at_ms=at if at is not None else opened,
    )


def truth(rule: str, subject: str, onset: int, end: int | None, delay_s: float) -> Truth:
    return Truth(rule, subject, "S1", onset, end, delay_s)


def test_detection_within_delay_plus_tolerance() -> None:
    t = truth("coldchain.high", "d1", T0, T0 + 60 * MIN, 900)
    ok = score([t], [alert("coldchain.high", "d1", T0 + 15 * MIN)])
    assert ok.perfect and ok.rules["coldchain.high"].recall == 1.0 and ok.matches[0].delay_s == 900
    edge = score([t], [alert("coldchain.high", "d1", T0 + 15 * MIN + 2000)])
    assert edge.perfect
    late = score([t], [alert("coldchain.high", "d1", T0 + 15 * MIN + 2001)])
    # Too late to count as the detection: a miss; opened during the condition, so not a false alarm either.
    assert late.misses == [t] and not late.false_positives and len(late.corroborating) == 1
    assert late.rules["coldchain.high"].recall == 0.0 and not late.perfect


def test_wrong_subject_or_site_is_no_match() -> None:
    t = truth("coldchain.high", "d1", T0, None, 900)
    assert score([t], [alert("coldchain.high", "d2", T0 + 900_000)]).misses == [t]
    assert score([t], [alert("coldchain.high", "d1", T0 + 900_000, site="S2")]).misses == [t]


def test_each_alert_detects_one_truth_and_delays_are_reported() -> None:
    ts = [
        truth("liveness.offline", "d1", T0, T0 + 10 * MIN, 120),
        truth("liveness.offline", "d1", T0 + 60 * MIN, None, 120),
    ]
    al = [alert("liveness.offline", "d1", T0 + 120_000), alert("liveness.offline", "d1", T0 + 61 * MIN)]
    s = score(ts, al)
    assert s.perfect
    r = s.rules["liveness.offline"]
    assert (r.detected, r.truths, r.delays_s, r.mean_delay_s, r.max_delay_s) == (2, 2, [120.0, 60.0], 90.0, 120.0)


def test_resolution_is_checked_when_the_truth_resolves() -> None:
    t = truth("coldchain.door_open", "d1", T0, T0 + 20 * MIN, 300)
    opened = T0 + 5 * MIN
    s = score(
        [t],
        [
            alert("coldchain.door_open", "d1", opened),
            alert("coldchain.door_open", "d1", opened, "resolved", T0 + 20 * MIN),
        ],
    )
    assert s.rules["coldchain.door_open"].resolved_ok == 1 and s.matches[0].resolved_at_ms == T0 + 20 * MIN
    unresolved = score([t], [alert("coldchain.door_open", "d1", opened)])
    assert unresolved.rules["coldchain.door_open"].resolved_ok == 0
    assert unresolved.rules["coldchain.door_open"].resolved_expected == 1


def test_same_family_alerts_during_a_truth_corroborate_others_are_false() -> None:
    t = truth("coldchain.high", "d1", T0, T0 + 120 * MIN, 900)
    crit = alert("coldchain.high_high", "d1", T0 + 40 * MIN)
    early = alert("coldchain.rate_of_rise", "d1", T0 - 5 * MIN)
    after = alert("coldchain.high_high", "d1", T0 + 200 * MIN)
    other_family = alert("liveness.stuck", "d1", T0 + 40 * MIN)
    s = score([t], [alert("coldchain.high", "d1", T0 + 15 * MIN), crit, early, after, other_family])
    assert {a.alert_id for a in s.corroborating} == {crit.alert_id, early.alert_id}
    assert {a.alert_id for a in s.false_positives} == {after.alert_id, other_family.alert_id}
    assert s.rules["coldchain.high"].precision == 1.0


def test_kitchen_subjects_and_no_truth_means_every_alert_is_false() -> None:
    t = truth("kitchen.unattended", "S1/k1", T0, None, 300)
    assert score([t], [alert("kitchen.unattended", "S1/k1", T0 + 5 * MIN)]).perfect
    empty = score([], [alert("kitchen.hygiene.no_hat", "S1/k1", T0)])
    assert len(empty.false_positives) == 1 and empty.rules["kitchen.hygiene.no_hat"].precision == 0.0
    assert score([], []).perfect


def test_timeline_order_and_identity() -> None:
    a = alert("coldchain.high", "d1", T0)
    b = alert("coldchain.low", "d2", T0)
    r = alert("coldchain.high", "d1", T0, "resolved", T0 + MIN)
    ordered = sort_alerts([r, b, a])
    assert ordered[-1] is r and {ordered[0].alert_id, ordered[1].alert_id} == {a.alert_id, b.alert_id}
    assert ordered[0].alert_id < ordered[1].alert_id
    assert identity([r, b, a]) == identity([a, b, r])
    lines = timeline_jsonl([r, a]).splitlines()
    assert len(lines) == 2 and b'"state":"open"' in lines[0] and b'"at":"' in lines[0]


def test_hook_signature_is_contract_2() -> None:
    body = b'{"event_id":"e1"}'
    expected = hmac.new(b"s3cret-key", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign("s3cret-key", body, 1_700_000_000) == f"sha256={expected}"


def test_reading_keys_of_single_and_batch_payloads() -> None:
    assert _reading_keys("d", {"ts": 1, "seq": 4, "temp_c": 1}) == [("d", 4)]
    assert _reading_keys("d", {"readings": [{"seq": 1}, {"seq": 2}, {"bad": 1}]}) == [("d", 1), ("d", 2)]
    assert _reading_keys("d", "not json") == []
