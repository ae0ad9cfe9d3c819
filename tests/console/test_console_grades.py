"""The console's grades board (pipeline/console/grades.py): one grading serves every rollup, and each role sees
exactly its rows. The figures themselves are checked against an independent computation in
tests/unit/test_grading.py; here the precomputed snapshot must equal computing each rollup on its own."""

from __future__ import annotations

from typing import Any

from pipeline.console import grades, users
from pipeline.grading import evidence, rollup, simulate
from pipeline.grading.evidence import DAY_MS

START = 1_790_035_200_000 - 1_790_035_200_000 % DAY_MS
AS_OF = START + 30 * DAY_MS


def _user(role: str, **scope: list[str]) -> users.User:
    return users.User(role=role, password_hash="$argon2id$v=19$m=65536,t=3,p=4$x$y", **scope)  # type: ignore[arg-type]


def test_snapshot_equals_each_rollup_computed_alone_and_roles_see_their_rows() -> None:
    cfg = simulate.site_config(24, seed=5)
    states = evidence.fold_all(simulate.events(simulate.simulate(cfg, START, 30, seed=2)))
    snap = grades.compute_snapshot(states, cfg, AS_OF)
    assert set(snap.grades) == set(cfg.sites) and snap.sites_with_evidence == len(states) > 0
    for level in grades.LEVELS:
        for period in grades.PERIODS:
            assert snap.rollups[(level, period)] == rollup.rollup(states, cfg, AS_OF, period, level), (level, period)

    stations = sorted({s.station for s in cfg.sites.values()})
    districts = sorted({s.district for s in cfg.sites.values()})
    assert len(stations) > 1 and districts
    st = _user("station", stations=[stations[0]])
    assert [r["station"] for r in grades.visible_rollup(snap, st, cfg, "station", "day")] == [stations[0]]
    assert grades.visible_rollup(snap, st, cfg, "district", "day") == []
    d = _user("district", districts=[districts[0]])
    mine = {s.station for s in cfg.sites.values() if s.district == districts[0]}
    assert {r["station"] for r in grades.visible_rollup(snap, d, cfg, "station", "week")} == mine
    assert [r["district"] for r in grades.visible_rollup(snap, d, cfg, "district", "week")] == [districts[0]]
    admin = _user("admin")
    assert len(grades.visible_rollup(snap, admin, cfg, "station", "month")) == len(stations)
    site = sorted(cfg.sites)[0]
    manager = _user("site_manager", sites=[site])
    assert grades.visible_rollup(snap, manager, cfg, "station", "day") == []
    assert [g.site for g in grades.visible_grades(snap, manager.scope(cfg))] == [site]
    ranked = grades.visible_grades(snap, admin.scope(cfg))
    assert [g.points for g in ranked] == sorted((g.points for g in ranked), reverse=True)

    csv_text = grades.rollup_csv(grades.visible_rollup(snap, admin, cfg, "station", "day"))
    lines = csv_text.strip().splitlines()
    assert lines[0].startswith("level,unit,") and len(lines) == 1 + len(stations)


def test_the_grades_page_shows_each_units_rapid_test_pass_rate(tmp_path: Any) -> None:
    """The rollup table of /grades has the rapid-test pass rate of each row (as the JSON / CSV carry it)."""
    import re

    from pipeline.console.app import Console, Principal
    from pipeline.settings import Settings
    from pipeline.topics import Topics

    cfg = simulate.site_config(10, seed=5)
    truth = simulate.simulate(cfg, START, 30, seed=2)
    states = evidence.fold_all(simulate.events(truth), simulate.rapid_results(cfg, truth, START, 30, seed=4))
    c = Console(Settings(state_dir=tmp_path), Topics(prefix="x"), cfg, tmp_path / "users.yaml")
    c.grading.snapshot = grades.compute_snapshot(states, cfg, AS_OF)
    admin = _user("admin")
    p = Principal("boss", admin, admin.scope(cfg), "t")
    data = c.grades_data(p, "station", "month")
    units, sites = c.grade_rows(data, p.csrf)
    html = c.env.get_template("grades.html").render(
        me=p, csrf="", path="/grades", now_ms=AS_OF, data=data, unit_rows=units, site_rows=sites
    )
    shown = dict(re.findall(r'<tr data-unit="([^"]+)">.*?<td class="rapid-pass">([^<]*)</td>', html, re.S))
    assert len(shown) == len(data["rollup"]) == 2
    for r in data["rollup"]:
        assert r["rapid_tests"] > 0
        assert shown[r["station"]] == f"{r['rapid_test_pass_rate'] * 100:.1f}% of {r['rapid_tests']}"


def test_cached_grade_rows_carry_each_sessions_token_and_follow_the_snapshot(tmp_path: Any) -> None:
    """The grades page's rows are rendered once per snapshot: every request still gets its own session's CSRF
    token in each override form (and no other), a reason that looks like the token's slot is escaped and left
    alone, and a new snapshot renders new rows."""
    from pipeline.console.app import Console, Principal
    from pipeline.grading.evidence import Override
    from pipeline.settings import Settings
    from pipeline.topics import Topics

    cfg = simulate.site_config(10, seed=5)
    states = evidence.fold_all(simulate.events(simulate.simulate(cfg, START, 30, seed=2)))
    site = sorted(cfg.sites)[0]
    tricky = Override(site=site, grade="B", reason="see \x00<csrf>\x00 <b>", by="x", at_ms=AS_OF - DAY_MS)
    states[site] = evidence.fold(states.get(site) or evidence.empty(site), tricky.model_dump())
    c = Console(Settings(state_dir=tmp_path), Topics(prefix="x"), cfg, tmp_path / "users.yaml")
    c.grading.snapshot = grades.compute_snapshot(states, cfg, AS_OF)
    admin = _user("admin")
    one, two = (Principal("boss", admin, admin.scope(cfg), token) for token in ("tok-one", "tok-two"))
    data = c.grades_data(one, "district", "week", limit=300)
    _, rows_one = c.grade_rows(data, one.csrf)
    _, rows_two = c.grade_rows(c.grades_data(two, "district", "week", limit=300), two.csrf)
    assert len(rows_one) == len(rows_two) == 10
    for a, b in zip(rows_one, rows_two, strict=True):
        assert a.count('value="tok-one"') == 1 and "tok-two" not in a
        assert b.count('value="tok-two"') == 1 and "tok-one" not in b
        assert a.replace("tok-one", "tok-two") == b
    [mine] = [r for r in rows_one if f'data-site="{site}"' in r]
    assert "see \x00&lt;csrf&gt;\x00 &lt;b&gt;" in mine  # escaped, not a slot
    # A site manager's rows have no form at all; a new snapshot's rows show its own grades.
    manager = _user("site_manager", sites=[site])
    mp = Principal("mgr", manager, manager.scope(cfg), "tok-3")
    _, [row] = c.grade_rows(c.grades_data(mp, "station", "day", limit=300), mp.csrf)
    assert "<form" not in row and "tok-3" not in row
    c.grading.snapshot = grades.compute_snapshot({}, cfg, AS_OF)
    _, fresh = c.grade_rows(c.grades_data(one, "district", "week", limit=300), one.csrf)
    assert all("nothing in the last 90 days" in r for r in fresh) and fresh != rows_one


async def test_a_refresh_keeps_no_evidence_and_freezes_the_snapshot(tmp_path: Any, monkeypatch: Any) -> None:
    """The board's collector handling (why: pipeline/console/grades.py): after a refresh the evidence it graded is
    gone, the survivors are frozen (so full collections skip them), and the collector is on again, also when
    Kafka is away."""
    import gc
    import weakref

    from pipeline.clock import Clock
    from pipeline.grading import store
    from pipeline.settings import Settings
    from pipeline.topics import Topics

    class States(dict[str, evidence.SiteEvidence]):
        """A dict that can be weakly referenced."""

    cfg = simulate.site_config(10, seed=5)
    read: list[weakref.ref[States]] = []

    async def fake_read(settings: Any, gt: Any) -> States:
        states = States()
        for e in simulate.events(simulate.simulate(cfg, START, 30, seed=2)):
            states[e["site"]] = evidence.fold(states.get(e["site"]) or evidence.empty(e["site"]), e)
        read.append(weakref.ref(states))
        return states

    class Fixed(Clock):
        def now_ms(self) -> int:
            return AS_OF

    unfrozen: list[int] = []
    real_unfreeze = gc.unfreeze

    def unfreeze() -> None:
        unfrozen.append(len(read))
        real_unfreeze()

    monkeypatch.setattr(store, "read_states", fake_read)
    monkeypatch.setattr(gc, "unfreeze", unfreeze)
    board = grades.GradingBoard(Settings(state_dir=tmp_path), Topics(prefix="x"), cfg, Fixed(), full_collect_every=2)
    try:
        await board.refresh()
        assert board.error is None and board.snapshot is not None and set(board.snapshot.grades) == set(cfg.sites)
        assert gc.isenabled() and gc.get_freeze_count() > 0
        assert read and read[0]() is None  # the graded evidence was not kept
        first = board.snapshot
        await board.refresh()
        await board.refresh()
        # Full collections (frozen objects unfrozen first) on the 1st and 3rd refresh only.
        assert unfrozen == [0, 2] and len(read) == 3 and all(r() is None for r in read)
        assert board.snapshot is not first and board.snapshot.grades == first.grades

        async def kafka_away(settings: Any, gt: Any) -> States:
            raise RuntimeError("no broker")

        monkeypatch.setattr(store, "read_states", kafka_away)
        before = board.snapshot
        await board.refresh()
        assert board.error == "no broker" and board.snapshot is before and gc.isenabled()
    finally:
        gc.enable()
        gc.unfreeze()
