"""Bench scenarios: packaged files parse, plans are the same for every client, bad files say
what is wrong."""

from __future__ import annotations

import pytest

from h2guard.bench.scenarios import all_scenarios, load_bench_scenario, select_scenarios
from h2guard.chaos.scenario import ScenarioError, profile_names

_GOOD = """
name = "mine"
description = "d"
[bench]
requests = 10
concurrency = 3
waves = 3
gap = "250ms"
mix = [{ method = "post", path = "/orders", body_size = 8, weight = 2 },
       { method = "GET", path = "/echo" }]
[[faults]]
kind = "rst_stream"
code = "REFUSED_STREAM"
"""


def test_every_packaged_scenario_and_profile_loads() -> None:
    scenarios = all_scenarios()
    names = [s.name for s in scenarios]
    assert len(names) == len(set(names))
    for required in ("refused-burst", "stream-limit", "request-cap", "goaway-storm",
                     "stale-goaway", "stale-fin", "stale-rst", "stale-blackhole",
                     "reset-after-app", "process-above", "overload", "flow-stall",
                     "large-bodies"):
        assert required in names
    assert set(profile_names()) <= set(names)  # every middlebox profile is a scenario
    for s in scenarios:
        for quick in (True, False):
            plan = s.workload(quick=quick).plan()
            ids = [r.id for wave in plan for r in wave]
            assert len(ids) == len(set(ids)) == s.workload(quick=quick).requests
        assert s.description and s.source, s.name


def test_quick_set_is_six_targeted_scenarios() -> None:
    quick = select_scenarios([], quick=True)
    assert [s.name for s in quick] == ["refused-burst", "stream-limit", "request-cap",
                                       "stale-fin", "reset-after-app", "process-above"]
    assert len(select_scenarios([], quick=False)) == len(all_scenarios())


def test_plan_interleaves_the_mix_by_weight_and_cuts_waves() -> None:
    s = load_bench_scenario(_GOOD, origin="mine.toml")
    plan = s.workload(quick=False).plan()
    assert [len(w) for w in plan] == [3, 3, 4]
    flat = [r for w in plan for r in w]
    assert [r.method for r in flat[:6]] == ["POST", "POST", "GET", "POST", "POST", "GET"]
    assert flat[0].body_size == 8 and flat[2].body_size == 0
    assert s.workload(quick=False).gap == 0.25
    assert s.workload(quick=True).requests == 10  # quick_requests defaults to min(60, requests)
    # the same plan every time: every client gets the same requests
    assert plan == s.workload(quick=False).plan()


@pytest.mark.parametrize(("text", "message"), [
    ("name = 'x'\n", "needs a [bench] table"),
    ("name = 'x'\n[bench]\nrequests = 0\nmix = [{path='/echo'}]\n", "bench.requests"),
    ("name = 'x'\n[bench]\nrequests = 5\nmix = []\n", "bench.mix"),
    ("name = 'x'\n[bench]\nrequests = 5\nmix = [{path='echo'}]\n", "must start with '/'"),
    ("name = 'x'\n[bench]\nrequests = 5\nmix = [{method='BREW'}]\n", "unsupported method"),
    ("name = 'x'\n[bench]\nrequests = 5\nrequestz = 1\nmix = [{}]\n", "unknown key 'requestz'"),
    ("name = 'x'\n[bench]\nrequests = 5\ngap = '-1s'\nmix = [{}]\n", "bench.gap"),
    ("name = 'x'\n[bench\n", "not valid TOML"),
    ("name = 'x'\n[bench]\nrequests = 5\nmix = [{}]\n[[faults]]\nkind = 'nope'\n", "faults"),
])
def test_bad_bench_files_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(ScenarioError) as info:
        load_bench_scenario(text, origin="bad.toml")
    assert message in str(info.value)
    assert str(info.value).startswith("bad.toml")


def test_selecting_unknown_scenarios_suggests_a_name() -> None:
    with pytest.raises(ScenarioError, match="did you mean 'request-cap'"):
        select_scenarios(["request-cpa"], quick=True)
    groups = select_scenarios(["middlebox"], quick=True)
    assert groups and all(s.kind == "middlebox" for s in groups)


def test_a_users_own_scenario_file_joins_the_run(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "mine.toml"
    path.write_text(_GOOD)
    chosen = select_scenarios(["mine", "request-cap"], quick=True, extra_files=[str(path)])
    assert [s.name for s in chosen] == ["mine", "request-cap"]
    assert "mine" in [s.name for s in select_scenarios([], quick=True,
                                                       extra_files=[str(path)])]
    with pytest.raises(ScenarioError, match="cannot read"):
        select_scenarios([], quick=True, extra_files=[str(tmp_path / "missing.toml")])


def test_middlebox_workloads_exceed_128_streams_and_wait_out_the_idle_timeout() -> None:
    nginx = next(s for s in all_scenarios() if s.name == "nginx")
    w = nginx.workload(quick=False)
    assert w.concurrency > 128 and w.waves >= 2
    assert w.gap > 75 * nginx.time_scale  # past nginx's keepalive_timeout, scaled
