"""Regimens: building from strings, schedules, and NONMEM-style event tables."""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ketasim.errors import KetasimError
from ketasim.regimen import (
    ROUTES,
    Dose,
    Infusion,
    Regimen,
    combine,
    dose_times,
    normalise_route,
    parse_schedule,
)
from ketasim.units import DoseAmount

NONMEM_COLUMNS = ["ID", "TIME", "EVID", "AMT", "RATE", "CMT", "II", "ADDL", "ROUTE"]


def _build(route: str, dose: str = "0.5 mg/kg", **kw) -> Regimen:
    if route == "iv-infusion":
        kw.setdefault("duration", "40 min")
    return Regimen.build(route, dose, **kw)


def _flat(reg: Regimen, weight_kg: float) -> list[tuple[str, float, float, float]]:
    """(route, time h, amount mg, duration h), sorted: comparable across per-kg / absolute."""
    return sorted((d.route, d.time_h, d.amount.mg(weight_kg), d.duration_h) for d in reg)


def _assert_same(a: Regimen, b: Regimen, weight_kg: float, tol: float = 1e-8) -> None:
    fa, fb = _flat(a, weight_kg), _flat(b, weight_kg)
    assert len(fa) == len(fb)
    for (ra, ta, ma, da), (rb, tb, mb, db) in zip(fa, fb, strict=True):
        assert ra == rb
        assert tb == pytest.approx(ta, abs=tol)
        assert mb == pytest.approx(ma, rel=1e-12)
        assert db == pytest.approx(da, rel=1e-9, abs=1e-12)


# ------------------------------------------------------------------ building
@pytest.mark.parametrize("route", ROUTES)
def test_build_every_route(route):
    reg = _build(route)
    assert len(reg) == 1
    (d,) = reg.doses
    assert d.route == route
    assert d.time_h == 0.0
    assert d.amount == DoseAmount(0.5, per_kg=True)
    assert reg.routes == (route,)
    assert reg.total_mg(70.0) == pytest.approx(35.0)
    if route == "iv-infusion":
        assert isinstance(d, Infusion)
        assert d.duration_h == pytest.approx(40 / 60)
        assert d.rate_mg_per_h(70.0) == pytest.approx(35.0 / (40 / 60))
        assert reg.end_h == pytest.approx(40 / 60)
    else:
        assert isinstance(d, Dose)
        assert d.duration_h == 0.0
        assert reg.end_h == 0.0


@pytest.mark.parametrize("route", ROUTES)
def test_build_every_route_with_schedule(route):
    reg = _build(route, "56 mg", schedule="every 3.5 d x 8")
    assert len(reg) == 8
    assert reg.routes == (route,)
    assert reg.total_mg(70.0) == pytest.approx(8 * 56.0)
    assert dose_times(reg) == pytest.approx([84.0 * k for k in range(8)])


@pytest.mark.parametrize(
    ("alias", "route"),
    [("iv", "iv-infusion"), ("IV", "iv-infusion"), ("infusion", "iv-infusion"),
     ("bolus", "iv-bolus"), ("iv_bolus", "iv-bolus"), ("in", "intranasal"),
     ("nasal", "intranasal"), ("po", "oral"), ("intramuscular", "im"), ("subcutaneous", "sc"),
     ("sl", "sublingual"), ("pr", "rectal"), (" Oral ", "oral")],
)
def test_route_aliases(alias, route):
    assert normalise_route(alias) == route


def test_unknown_route():
    with pytest.raises(KetasimError) as exc:
        Regimen.build("inhaled", "10 mg")
    assert exc.value.field == "route"
    assert "intranasal" in exc.value.allowed


def test_infusion_needs_duration():
    with pytest.raises(KetasimError) as exc:
        Regimen.build("iv-infusion", "0.5 mg/kg")
    assert exc.value.field == "duration"
    with pytest.raises(KetasimError) as exc:
        Regimen.build("iv-infusion", "0.5 mg/kg", duration="0 min")
    assert exc.value.field == "duration"


def test_duration_ignored_for_non_infusions():
    reg = Regimen.build("intranasal", "56 mg", duration="40 min")
    assert reg.end_h == 0.0
    assert isinstance(reg.doses[0], Dose)


def test_build_start_offset_and_salt():
    reg = Regimen.build("iv-bolus", "10 mg", schedule="daily x 3", start="2 h", salt="hcl")
    assert dose_times(reg) == pytest.approx([2.0, 26.0, 50.0])
    assert reg.total_mg(70.0) == pytest.approx(3 * 10.0 * 0.867)


def test_build_rejects_bad_dose():
    with pytest.raises(KetasimError) as exc:
        Regimen.build("iv-bolus", "0 mg")
    assert exc.value.field == "dose"
    with pytest.raises(KetasimError) as exc:
        Regimen.build("iv-bolus", "10 mg", start="-1 h")
    assert exc.value.field == "start"


def test_dose_objects_validate():
    a = DoseAmount(10.0, per_kg=False)
    with pytest.raises(KetasimError):
        Dose(0.0, a, "iv-infusion")  # an infusion needs a duration
    with pytest.raises(KetasimError) as exc:
        Dose(-1.0, a, "oral")
    assert exc.value.field == "time"
    with pytest.raises(KetasimError):
        Dose(float("nan"), a, "oral")
    with pytest.raises(KetasimError) as exc:
        Dose(0.0, DoseAmount(0.0, per_kg=False), "oral")
    assert exc.value.field == "dose"
    with pytest.raises(KetasimError) as exc:
        Infusion(0.0, a, 0.0)
    assert exc.value.field == "duration"
    with pytest.raises(KetasimError) as exc:
        Dose(0.0, a, "transdermal")
    assert exc.value.field == "route"


def test_regimen_is_ordered_and_combinable():
    a = Regimen.build("oral", "50 mg", schedule="at 0, 24 h")
    b = Regimen.build("iv-bolus", "10 mg", start="12 h")
    both = a + b
    assert dose_times(both) == [0.0, 12.0, 24.0]
    assert [d.route for d in both] == ["oral", "iv-bolus", "oral"]
    assert combine([a, b]) == both
    assert both.routes == ("iv-bolus", "oral")
    assert both.total_mg(70) == pytest.approx(110.0)
    # frozen
    with pytest.raises(AttributeError):
        both.doses = ()  # type: ignore[misc]


# ------------------------------------------------------------------ schedules
@pytest.mark.parametrize(
    ("text", "times"),
    [
        ("every 3.5 d x 8", [84.0 * k for k in range(8)]),
        ("every 3.5 d × 8", [84.0 * k for k in range(8)]),
        ("every 3.5 d x8", [84.0 * k for k in range(8)]),
        ("Every 3.5 d X 8", [84.0 * k for k in range(8)]),
        ("twice weekly for 4 weeks", [84.0 * k for k in range(8)]),
        ("twice weekly x 8", [84.0 * k for k in range(8)]),
        ("daily x 7", [24.0 * k for k in range(7)]),
        ("daily for 1 week", [24.0 * k for k in range(7)]),
        ("weekly x 4", [168.0 * k for k in range(4)]),
        ("2 times daily x 4", [0.0, 12.0, 24.0, 36.0]),
        ("thrice weekly for 1 week", [0.0, 56.0, 112.0]),
        ("every 24 h for 5 d", [0.0, 24.0, 48.0, 72.0, 96.0]),
        ("every 12 h for 2 d", [0.0, 12.0, 24.0, 36.0]),
        ("every 40 min x 3", [0.0, 2 / 3, 4 / 3]),
        ("at 0, 3.5 d, 7 d", [0.0, 84.0, 168.0]),
        ("at 0 h, 30 min, 2 h", [0.0, 0.5, 2.0]),
        ("at 1 h", [1.0]),
        ("once", [0.0]),
        ("single", [0.0]),
        ("", [0.0]),
        (None, [0.0]),
    ],
)
def test_parse_schedule(text, times):
    assert parse_schedule(text) == pytest.approx(times, abs=1e-12)


def test_twice_weekly_for_four_weeks_is_eight_doses_84h_apart():
    reg = Regimen.build("intranasal", "56 mg", schedule="twice weekly for 4 weeks")
    t = dose_times(reg)
    assert len(t) == 8
    assert all(b - a == pytest.approx(84.0) for a, b in zip(t, t[1:], strict=False))


@pytest.mark.parametrize(
    "text",
    ["fortnightly", "every 3.5 d", "every 3.5 d x 0", "every 0 h x 3", "every -1 d x 3",
     "every 3.5 parsecs x 2", "every 1 min x 20000", "every 3.5 d for 1 h",
     "at 0, 7 d, 3.5 d", "at 0, 0", "at -1 h", "at 0, 1 furlong", "twice daily",
     "zero daily x 3", "0 daily x 3", "x 8", "daily x", "whenever"],
)
def test_bad_schedules_name_schedule(text):
    with pytest.raises(KetasimError) as exc:
        parse_schedule(text)
    assert "schedule" in exc.value.field
    assert str(exc.value).startswith("schedule")
    with pytest.raises(KetasimError) as exc:
        Regimen.build("iv-bolus", "10 mg", schedule=text)
    assert "schedule" in exc.value.field


# ------------------------------------------------------------------ event tables
def test_event_table_columns_and_compression():
    reg = Regimen.build("iv-infusion", "0.5 mg/kg", duration="40 min",
                        schedule="twice weekly for 4 weeks")
    tab = reg.to_event_table(70.0)
    assert list(tab.columns) == NONMEM_COLUMNS
    assert len(tab) == 1
    row = tab.iloc[0]
    assert row["ID"] == 1
    assert row["TIME"] == 0.0
    assert row["EVID"] == 1
    assert row["AMT"] == pytest.approx(35.0)  # 0.5 mg/kg x 70 kg
    assert row["RATE"] == pytest.approx(35.0 / (40 / 60))  # AMT / duration = 52.5 mg/h
    assert row["CMT"] == 1
    assert row["II"] == pytest.approx(84.0)
    assert row["ADDL"] == 7
    assert row["ROUTE"] == "iv-infusion"


def test_event_table_uncompressed():
    reg = Regimen.build("oral", "0.5 mg/kg", schedule="daily x 3")
    tab = reg.to_event_table(80.0, compress=False, subject_id=7)
    assert len(tab) == 3
    assert tab["TIME"].tolist() == [0.0, 24.0, 48.0]
    assert tab["AMT"].tolist() == pytest.approx([40.0] * 3)
    assert (tab["RATE"] == 0).all()
    assert (tab["II"] == 0).all() and (tab["ADDL"] == 0).all()
    assert (tab["ID"] == 7).all()


def test_event_table_bolus_rate_zero_and_weight_scaling():
    reg = Regimen.build("iv-bolus", "250 µg/kg")
    for w in (50.0, 70.0, 110.0):
        tab = reg.to_event_table(w)
        assert tab["AMT"].iloc[0] == pytest.approx(0.25 * w)
        assert tab["RATE"].iloc[0] == 0.0
    absolute = Regimen.build("intranasal", "56 mg").to_event_table(110.0)
    assert absolute["AMT"].iloc[0] == 56.0


def test_event_table_irregular_gaps_split_records():
    reg = Regimen.build("iv-bolus", "10 mg", schedule="at 0, 24 h, 48 h, 50 h, 52 h")
    tab = reg.to_event_table(70.0)
    assert tab[["TIME", "II", "ADDL"]].values.tolist() == [[0.0, 24.0, 2], [50.0, 2.0, 1]]
    _assert_same(Regimen.from_event_table(tab), reg, 70.0)


def test_event_table_different_amounts_not_merged():
    reg = (Regimen.build("iv-bolus", "10 mg", schedule="at 0, 24 h")
           + Regimen.build("iv-bolus", "20 mg", schedule="at 48 h, 72 h"))
    tab = reg.to_event_table(70.0)
    assert tab[["TIME", "AMT", "II", "ADDL"]].values.tolist() == [
        [0.0, 10.0, 24.0, 1], [48.0, 20.0, 24.0, 1]]


def test_event_table_mixed_routes_and_cmt():
    reg = (Regimen.build("intranasal", "56 mg", schedule="every 3.5 d x 3")
           + Regimen.build("iv-infusion", "0.5 mg/kg", duration="40 min", start="1 h"))
    tab = reg.to_event_table(70.0, cmt_of_route={"intranasal": 1, "iv-infusion": 4})
    assert tab["CMT"].tolist() == [1, 4, 1]
    assert tab["ROUTE"].tolist() == ["intranasal", "iv-infusion", "intranasal"]
    # without the ROUTE column, the route comes from the compartment map
    back = Regimen.from_event_table(tab.drop(columns="ROUTE"),
                                    route_of_cmt={1: "intranasal", 4: "iv-infusion"})
    _assert_same(back, reg, 70.0)


def test_event_table_route_fallback_from_rate():
    tab = pd.DataFrame({"TIME": [0.0, 2.0], "AMT": [10.0, 30.0], "RATE": [0.0, 60.0]})
    reg = Regimen.from_event_table(tab)
    assert [d.route for d in reg] == ["iv-bolus", "iv-infusion"]
    assert reg.doses[1].duration_h == pytest.approx(0.5)


def test_event_table_csv_round_trip(tmp_path):
    reg = (Regimen.build("iv-infusion", "0.5 mg/kg", duration="40 min",
                         schedule="twice weekly for 4 weeks")
           + Regimen.build("intranasal", "84 mg", schedule="at 1 d, 2 d"))
    path = tmp_path / "events.csv"
    reg.to_event_table(72.5).to_csv(path, index=False)
    back = Regimen.from_event_table(str(path))
    _assert_same(back, reg, 72.5)
    assert back.total_mg(1.0) == pytest.approx(reg.total_mg(72.5))


def test_event_table_reader_filters_and_lowercase(tmp_path):
    tab = pd.DataFrame({
        "id": [1, 1, 1, 2],
        "time": [0.0, 1.0, 24.0, 0.0],
        "evid": [1, 0, 1, 1],
        "amt": [10.0, 0.0, 10.0, 99.0],
        "route": ["oral", "oral", "oral", "im"],
    })
    reg = Regimen.from_event_table(tab, subject_id=1)
    assert dose_times(reg) == [0.0, 24.0]  # the observation record (EVID 0) is skipped
    assert reg.routes == ("oral",)
    other = Regimen.from_event_table(tab, subject_id=2)
    assert other.routes == ("im",) and other.total_mg(1) == 99.0


@pytest.mark.parametrize(
    ("table", "field"),
    [
        ({"TIME": [0.0], "RATE": [0.0]}, "event table"),  # no AMT
        ({"AMT": [10.0]}, "event table"),  # no TIME
        ({"TIME": [0.0], "AMT": [0.0]}, "AMT"),
        ({"TIME": [0.0, 1.0], "AMT": [10.0, -5.0]}, "AMT"),
        ({"TIME": [0.0], "AMT": [10.0], "ADDL": [3]}, "II"),
        ({"TIME": [0.0], "AMT": [10.0], "ADDL": [3], "II": [0.0]}, "II"),
        ({"TIME": [0.0], "AMT": [10.0], "ADDL": [-1], "II": [24.0]}, "ADDL"),
        ({"TIME": [0.0], "AMT": [10.0], "ADDL": [2.5], "II": [24.0]}, "ADDL"),
        ({"TIME": [0.0], "AMT": [10.0], "ADDL": [float("inf")], "II": [24.0]}, "ADDL"),
        ({"TIME": [0.0], "AMT": [10.0], "ADDL": [1e9], "II": [24.0]}, "ADDL"),
        ({"TIME": [0.0], "AMT": [10.0], "ADDL": ["."], "II": [24.0]}, "ADDL"),
        ({"TIME": [0.0], "AMT": [float("nan")]}, "AMT"),
        ({"TIME": [0.0], "AMT": [10.0], "RATE": [-2.0]}, "RATE"),
        ({"TIME": [0.0], "AMT": [10.0], "EVID": [0]}, "event table"),
        ({"TIME": [-1.0], "AMT": [10.0]}, "row 1 column TIME"),
        ({"TIME": [0.0], "AMT": [10.0], "ROUTE": ["inhaled"]}, "row 1 column ROUTE"),
        ({"TIME": [0.0], "AMT": ["abc"]}, "row 1 column AMT"),
        ({"TIME": [0.0], "AMT": [70000.0]}, "row 1 column AMT"),
        ({"TIME": [0.0], "AMT": [10.0], "RATE": [0.0], "ROUTE": ["iv-infusion"]},
         "row 1 column RATE"),
    ],
)
def test_bad_event_tables(table, field):
    with pytest.raises(KetasimError) as exc:
        Regimen.from_event_table(pd.DataFrame(table))
    assert field in exc.value.field


def test_event_table_errors_name_the_file_row_and_column(tmp_path):
    """A CSV read by path is named in the error like the fit data's: FILE row N column COL."""
    p = tmp_path / "doses.csv"
    p.write_text("ID,TIME,EVID,AMT\n1,0,1,10\n1,24,1,abc\n", encoding="utf-8")
    with pytest.raises(KetasimError) as exc:
        Regimen.from_event_table(str(p))
    assert exc.value.field == f"{p} row 2 column AMT"


def test_event_table_empty_cells_mean_defaults(tmp_path):
    """Blank RATE/II/ADDL/CMT cells (NaN after read_csv) read as 0 / absent."""
    path = tmp_path / "blank.csv"
    path.write_text("ID,TIME,EVID,AMT,RATE,CMT,II,ADDL\n"
                    "1,0,1,10,,,24,2\n"
                    "1,1,0,,,,,\n"
                    "1,80,1,35,52.5,,,\n")
    reg = Regimen.from_event_table(str(path))
    assert dose_times(reg) == [0.0, 24.0, 48.0, 80.0]
    assert [d.route for d in reg] == ["iv-bolus"] * 3 + ["iv-infusion"]
    assert reg.doses[-1].duration_h == pytest.approx(35.0 / 52.5)


def test_missing_columns_message_lists_them():
    with pytest.raises(KetasimError) as exc:
        Regimen.from_event_table(pd.DataFrame({"ID": [1], "RATE": [0.0]}))
    assert "AMT" in str(exc.value) and "TIME" in str(exc.value)


# ------------------------------------------------------------------ property: round trip
_amount = st.floats(min_value=0.01, max_value=200.0, allow_nan=False)  # ≤ MAX_DOSE_MG_PER_KG
_block = st.fixed_dictionaries({
    "route": st.sampled_from(ROUTES),
    "value": _amount,
    "per_kg": st.booleans(),
    "duration": st.floats(min_value=1 / 60, max_value=12.0),
    "start": st.floats(min_value=0.0, max_value=500.0),
    "interval": st.floats(min_value=0.1, max_value=200.0),
    "n": st.integers(min_value=1, max_value=10),
    "irregular": st.lists(st.floats(min_value=0.0, max_value=1000.0), max_size=4),
})


def _regimen_of(blocks) -> Regimen:
    doses = []
    for b in blocks:
        amount = DoseAmount(b["value"], per_kg=b["per_kg"])
        times = [b["start"] + k * b["interval"] for k in range(b["n"])] + b["irregular"]
        for t in times:
            if b["route"] == "iv-infusion":
                doses.append(Infusion(t, amount, b["duration"]))
            else:
                doses.append(Dose(t, amount, b["route"]))
    return Regimen(tuple(doses))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blocks=st.lists(_block, min_size=1, max_size=3),
       weight=st.floats(min_value=0.5, max_value=300.0), compress=st.booleans())
def test_event_table_round_trip_property(tmp_path, blocks, weight, compress):
    reg = _regimen_of(blocks)
    tab = reg.to_event_table(weight, compress=compress)
    assert list(tab.columns) == NONMEM_COLUMNS
    # compression never loses doses: 1 + ADDL per record adds up to the number of doses
    assert int((1 + tab["ADDL"]).sum()) == len(reg)
    assert float((tab["AMT"] * (1 + tab["ADDL"])).sum()) == pytest.approx(
        reg.total_mg(weight), rel=1e-12)
    inf = tab["ROUTE"] == "iv-infusion"
    assert (tab.loc[~inf, "RATE"] == 0).all()
    assert (tab.loc[inf, "RATE"] > 0).all()
    # from the DataFrame ...
    _assert_same(Regimen.from_event_table(tab), reg, weight)
    # ... and through a CSV file
    path = tmp_path / "events.csv"
    tab.to_csv(path, index=False)
    _assert_same(Regimen.from_event_table(str(path)), reg, weight)
