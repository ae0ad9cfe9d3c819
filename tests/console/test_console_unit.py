"""The console's pure parts: users and scopes, sessions, the login limiter, the read model, charts, sink points."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.console import auth, charts, users
from pipeline.console.model import ReadModel, age_bucket
from pipeline.console.records import AuditRecord, ResolutionRecord, VerdictRecord, sink_lines
from pipeline.schemas import Ack, Alert, AlertState, Delivery, Severity, alert_id, ms_to_iso
from pipeline.siteconfig import SiteConfig
from pipeline.topics import Topics

T0 = 1_764_000_000_000
CFG = SiteConfig.model_validate(
    {
        "sites": {
            "S1": {"station": "ST1", "district": "D1"},
            "S2": {"station": "ST2", "district": "D1"},
            "S3": {"station": "ST3", "district": "D2"},
        }
    }
)
HASH = users.hash_password("correct horse battery")


def user(role: str, **kw: list[str]) -> users.User:
    return users.User.model_validate({"role": role, "password_hash": HASH, **kw})


def test_each_role_sees_exactly_its_sites() -> None:
    assert user("admin").scope(CFG) == {"S1", "S2", "S3"}
    assert user("district", districts=["D1"]).scope(CFG) == {"S1", "S2"}
    assert user("station", stations=["ST2"]).scope(CFG) == {"S2"}
    assert user("operator", sites=["S3", "S9"]).scope(CFG) == {"S3"}  # a site not in the file gives nothing
    with pytest.raises(ValueError, match="stations"):
        user("station")
    with pytest.raises(ValueError, match="argon2"):
        users.User.model_validate({"role": "admin", "password_hash": "plain"})


def test_users_file_round_trip_and_password_check(tmp_path: Path) -> None:
    path = tmp_path / "users.yaml"
    uf = users.UsersFile(users={"li": user("station", stations=["ST1"])})
    users.save(path, uf)
    assert path.stat().st_mode & 0o777 == 0o600
    loaded = users.load(path)
    assert users.verify(loaded, "li", "correct horse battery") is not None
    assert users.verify(loaded, "li", "wrong horse battery") is None
    assert users.verify(loaded, "nobody", "correct horse battery") is None
    with pytest.raises(users.UsersFileError):
        users.hash_password("short")
    path.write_text("version: 1\nusers:\n  x: {role: station, password_hash: '$argon2id$x'}\n")
    with pytest.raises(users.UsersFileError, match=r"users\.x"):
        users.load(path)


def test_session_cookie_is_signed_and_csrf_checked() -> None:
    s = auth.Sessions("k" * 40)
    cookie, csrf = s.issue("li")
    data = s.read(cookie)
    assert data is not None and data["u"] == "li" and auth.csrf_ok(data, csrf)
    assert not auth.csrf_ok(data, "") and not auth.csrf_ok(data, csrf + "x")
    assert s.read(cookie[:-2] + "xx") is None  # tampered
    assert auth.Sessions("other-key" * 5).read(cookie) is None
    lc, tok = s.login_token()
    assert s.login_token_ok(lc, tok) and not s.login_token_ok(lc, "x") and not s.login_token_ok(None, tok)


def test_login_limiter_locks_a_name_and_an_address_then_forgets() -> None:
    lim = auth.LoginLimiter(max_failures=5, max_failures_remote=8, window_s=900)
    for i in range(5):
        assert lim.retry_after("li", "10.0.0.1", now=100 + i) == 0
        lim.failed("li", "10.0.0.1", now=100 + i)
    assert lim.retry_after("LI", "10.0.0.9", now=110) > 0  # the name is locked from anywhere
    assert lim.retry_after("wang", "10.0.0.1", now=110) == 0  # others from the same office are not (yet)
    for i in range(3):
        lim.failed(f"u{i}", "10.0.0.1", now=111)
    assert lim.retry_after("wang", "10.0.0.1", now=112) > 0  # the address is locked after 8
    assert lim.retry_after("li", "10.0.0.9", now=100 + 4 + 900.1) == 0


def _alert(rule: str, site: str, state: AlertState, at: int, opened: int = T0, **ev: object) -> Alert:
    return Alert(
        alert_id=alert_id(rule, f"{site}-dev", opened),
        rule=rule,
        severity=Severity.WARNING,
        site=site,
        subject=f"{site}-dev",
        state=state,
        opened_at=ms_to_iso(opened),
        resolved_at=ms_to_iso(at) if state is AlertState.RESOLVED else None,
        at_ms=at,
        evidence=dict(ev),
    )


def test_read_model_folds_lifecycle_deliveries_acks_verdicts_and_resolutions() -> None:
    t = Topics(prefix="x")
    m = ReadModel(t)
    hyg = _alert("kitchen.hygiene.no_hat", "S1", AlertState.OPEN, T0)
    aid = hyg.alert_id
    # An ack and a verdict that arrive before their alert (another partition) are kept and attached later.
    ack = Ack(alert_id=aid, site="S1", by="li", via="console", note="seen", at_ms=T0 + 5)
    assert m.apply_record(t.acks, ack.model_dump_json().encode()) is None
    planned = Delivery(
        kind="planned",
        message_id="m1",
        at_ms=T0 + 1,
        recipient="r",
        recipient_name="op",
        role="operator",
        keys=[f"{aid}|0|r"],
        alert_ids=[aid],
        channels=["sms"],
    )
    m.apply_record(t.deliveries, planned.model_dump_json().encode())
    assert m.apply_record(t.alerts, hyg.model_dump_json().encode()) == aid
    m.fix_early_messages()
    view = m.alerts[aid]
    assert view.acks == [ack] and view.acknowledged and view.messages == ["m1"] and view.status() == "acknowledged"
    delivered = planned.model_copy(update={"kind": "delivered", "channel": "sms", "at_ms": T0 + 2})
    m.apply_record(t.deliveries, delivered.model_dump_json().encode())
    assert m.messages["m1"].status == "delivered" and m.messages["m1"].steps(aid) == ["0"]
    v = VerdictRecord(alert_id=aid, site="S1", verdict="false_positive", by="li", at_ms=T0 + 9)
    m.apply_record(t.verdicts, v.model_dump_json().encode())
    m.apply_record(t.verdicts, v.model_dump_json().encode())  # redelivered: one verdict
    assert view.verdicts == [v] and view.verdict == "false_positive" and view.summary(T0)["verdict"] == "false_positive"
    assert m.query(frozenset({"S1"})) == [view] and m.query(frozenset({"S2"})) == []
    r = ResolutionRecord(
        alert_id=aid, site="S1", by="li", corrective_action="retrained cook", disposition="use", at_ms=T0 + 20
    )
    m.apply_record(t.resolutions, r.model_dump_json().encode())
    assert view.status() == "closed" and m.query(frozenset({"S1"})) == []
    assert m.query(frozenset({"S1"}), state="closed") == [view]
    m.apply_record(t.alerts, b"{not json")
    assert m.skipped == 1


def test_queue_filters_and_order() -> None:
    t = Topics(prefix="x")
    m = ReadModel(t)
    a_old = _alert("coldchain.high", "S1", AlertState.OPEN, T0, opened=T0)
    a_new = _alert("liveness.offline", "S2", AlertState.OPEN, T0 + 60_000, opened=T0 + 60_000, retrospective=True)
    a_done = _alert("coldchain.low", "S1", AlertState.OPEN, T0 + 1, opened=T0 + 1)
    for a in (a_new, a_old, a_done):
        m.on_alert(a)
    m.on_alert(a_done.model_copy(update={"state": AlertState.RESOLVED, "at_ms": T0 + 9}))
    scope = frozenset({"S1", "S2"})
    assert [v.alert_id for v in m.query(scope)] == [a_old.alert_id, a_new.alert_id]
    assert [v.rule for v in m.query(scope, rule="coldchain")] == ["coldchain.high"]
    assert [v.rule for v in m.query(scope, retrospective="yes")] == ["liveness.offline"]
    assert [v.rule for v in m.query(scope, state="resolved")] == ["coldchain.low"]
    assert m.query(scope, site="S3") == []
    assert [age_bucket(s) for s in (0, 3599, 3600, 4 * 3600, 86_400)] == ["< 1 h", "< 1 h", "1-4 h", "4-24 h", "> 24 h"]


def test_temperature_chart_shades_the_excursion_draws_limits_and_escapes() -> None:
    pts = [(T0 + i * 60_000, 4.0 + (6 if 30 <= i < 50 else 0)) for i in range(90)]
    svg = charts.temperature_chart(
        pts,
        start_ms=T0,
        end_ms=T0 + 90 * 60_000,
        limits=[charts.Limit("H", 8.0)],
        shade=(T0 + 1_800_000, T0 + 3_000_000),
        title="<cold room>",
    )
    assert svg.count('class="excursion"') == 1 and 'class="limit high"' in svg and "H 8 °C" in svg
    assert "<cold room>" not in svg and "&lt;cold room&gt;" in svg
    assert "no readings" in charts.temperature_chart([], start_ms=T0, end_ms=T0 + 1000)
    assert "path" in charts.sparkline(pts, start_ms=T0, end_ms=T0 + 90 * 60_000, limits=[8.0])


def test_sink_points_of_console_records() -> None:
    t = Topics(prefix="x")
    ack = Ack(alert_id="al-1", site="S1", by="li", via="console", note='door "closed"', at_ms=T0)
    (line,) = sink_lines(t, t.acks, ack.model_dump(mode="json")) or []
    assert line.startswith("ack,site=S1,via=console ") and 'note="door \\"closed\\""' in line
    audit = AuditRecord(at_ms=T0, user="li", role="station", action="login_failed", ok=False, remote="127.0.0.1")
    (aline,) = sink_lines(t, t.audit, audit.model_dump(mode="json")) or []
    assert aline.startswith("audit,action=login_failed,ok=false,role=station ") and 'remote="127.0.0.1"' in aline
    assert sink_lines(t, t.alerts, {}) is None
    with pytest.raises(ValueError, match="use_within_h"):
        ResolutionRecord(alert_id="a", site="S1", by="li", corrective_action="x", disposition="use_within", at_ms=1)


def test_overview_counts_by_severity_age_and_scope(tmp_path: Path) -> None:
    from pipeline.clock import Clock
    from pipeline.console.app import Console, Principal
    from pipeline.settings import Settings

    class Fixed(Clock):
        def now_ms(self) -> int:
            return T0 + 30 * 3600_000

    c = Console(Settings(state_dir=tmp_path), Topics(prefix="x"), CFG, tmp_path / "users.yaml", clock=Fixed())
    hours: dict[str, list[float]] = {"S1": [0.5, 2, 29.9], "S2": [10], "S3": [1]}  # alert ages at "now" in hours
    for site, ages in hours.items():
        for h in ages:
            opened = T0 + int((30 - h) * 3600_000)
            c.model.on_alert(
                _alert(
                    "liveness.offline" if site == "S2" else "coldchain.high",
                    site,
                    AlertState.OPEN,
                    opened,
                    opened=opened,
                )
            )
    c.model.on_alert(
        _alert("coldchain.high", "S1", AlertState.OPEN, T0, opened=T0).model_copy(
            update={"severity": Severity.CRITICAL, "alert_id": "al-crit"}
        )
    )
    u = user("district", districts=["D1"])
    d = c.overview_data(Principal("z", u, u.scope(CFG), "t"))
    m = d["open_by_severity_and_age"]
    assert m["warning"] == {"< 1 h": 1, "1-4 h": 1, "4-24 h": 1, "> 24 h": 1}  # S3's is outside the scope
    assert m["critical"] == {"< 1 h": 0, "1-4 h": 0, "4-24 h": 0, "> 24 h": 1}
    rows = {r["site"]: r for st in d["stations"] for r in st["sites"]}
    assert set(rows) == {"S1", "S2"} and rows["S1"]["status"] == "critical" and rows["S1"]["open"]["warning"] == 3
    assert rows["S2"]["devices_offline"] == 1 and rows["S2"]["status"] == "warning" and d["devices_offline"] == 1


def test_only_site_staff_can_be_the_food_safety_officer() -> None:
    u = users.User.model_validate(
        {"role": "site_manager", "sites": ["S1"], "food_safety_officer": True, "password_hash": HASH}
    )
    assert u.food_safety_officer and user("operator", sites=["S1"]).food_safety_officer is False
    for role, scope in (("station", {"stations": ["ST1"]}), ("admin", {})):
        with pytest.raises(ValueError, match="food_safety_officer"):
            users.User.model_validate({"role": role, "food_safety_officer": True, "password_hash": HASH, **scope})


def test_report_index_folds_versions_signoffs_and_tombstones() -> None:
    from pipeline import serde
    from pipeline.console.reports import ReportIndex
    from pipeline.reports.model import ReportRecord, SignOff

    def rec(site: str, day: str, v: int) -> ReportRecord:
        return ReportRecord(
            site=site,
            date=day,
            version=v,
            report_id=f"LDR-{site}-{day}-v{v}",
            sha256=f"{v:064d}",
            prev_sha256="0" * 64,
            generated_ms=T0 + v,
            data_sha256="d" * 64,
            files={"report.pdf": "a" * 64},
        )

    idx = ReportIndex()
    for r in (rec("S1", "2026-11-22", 1), rec("S1", "2026-11-23", 1), rec("S2", "2026-11-23", 1)):
        idx.apply(True, r.key.encode(), serde.dumps(r.model_dump(mode="json")))
    idx.apply(True, b"x", b"not json")  # a foreign record is skipped, not fatal
    assert [(u["site"], u["date"]) for u in idx.unsigned({"S1"})] == [("S1", "2026-11-22"), ("S1", "2026-11-23")]
    s = SignOff(site="S1", date="2026-11-22", name="Sun", at_ms=T0, report_sha256=f"{1:064d}", report_version=1)
    idx.apply(False, s.key.encode(), serde.dumps(s.model_dump(mode="json")))
    idx.add(rec("S1", "2026-11-22", 2))
    rows = idx.site_rows("S1")
    assert [r["date"] for r in rows] == ["2026-11-23", "2026-11-22"]
    assert rows[1]["signed"] and rows[1]["latest"]["version"] == 2 and len(rows[1]["versions"]) == 2
    assert [(u["site"], u["date"]) for u in idx.unsigned({"S1", "S2"})] == [("S1", "2026-11-23"), ("S2", "2026-11-23")]
    idx.apply(False, s.key.encode(), None)  # tombstone of the sign-off
    idx.apply(True, b"S1|2026-11-23|v1", None)
    assert [u["date"] for u in idx.unsigned({"S1"})] == ["2026-11-22"]
    assert idx.day("S1", "2026-11-23") is None and idx.site_rows("S3") == []
