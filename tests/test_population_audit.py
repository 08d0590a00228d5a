"""Audit of the virtual-population generator (``ketasim.population``).

Marginals against the clinic card and the spec defaults on a large sample (5-SE tolerances,
fixed seeds), the effect of clipping, independence of the draws, per-patient reproducibility
and hostile specs. Chunking, executors and common random numbers at the trial level are
tested in test_trial.py / test_scaleout.py and are not repeated here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from ketasim.cards import load_param_card
from ketasim.errors import KetasimError
from ketasim.population import sample_arm, sample_patient
from ketasim.scenario import PopulationSpec, parse_scenario

N = 20_000
CARD = load_param_card("clinic")


def _clipped_normal(mu: float, sd: float, lo: float, hi: float) -> tuple[float, float]:
    """Mean and SD of clip(N(mu, sd), lo, hi) (exact)."""
    if sd == 0:
        v = min(max(mu, lo), hi)
        return v, 0.0
    a, b = (lo - mu) / sd, (hi - mu) / sd
    pa, pb = norm.cdf(a), norm.sf(b)
    mid = norm.cdf(b) - norm.cdf(a)
    # truncated-normal pieces of the middle part
    m1 = mu * mid + sd * (norm.pdf(a) - norm.pdf(b))
    m2 = ((mu**2 + sd**2) * mid + 2 * mu * sd * (norm.pdf(a) - norm.pdf(b))
          + sd**2 * (a * norm.pdf(a) - b * norm.pdf(b)))
    mean = lo * pa + hi * pb + m1
    ex2 = lo**2 * pa + hi**2 * pb + m2
    return mean, math.sqrt(max(ex2 - mean**2, 0.0))


def _check_mean_sd(x: np.ndarray, mean: float, sd: float) -> None:
    n = len(x)
    se_mean = max(sd, 1e-12) / math.sqrt(n)
    se_sd = max(sd, 1e-12) / math.sqrt(2 * n) * 1.5  # 1.5: clipped tails are not normal
    assert abs(x.mean() - mean) < 5 * se_mean, (x.mean(), mean, se_mean)
    assert abs(x.std(ddof=1) - sd) < 5 * se_sd, (x.std(ddof=1), sd, se_sd)


@pytest.fixture(scope="module")
def big():
    spec = PopulationSpec(disorder="trd", n=N, seed=20261127)
    pts = sample_arm(spec, 0, N, n_visits=1)
    cols = {k: np.array([getattr(p, k) for p in pts]) for k in
            ("weight_kg", "age_years", "baseline_madrs", "eta_placebo", "eta_emax",
             "pk_factor_cl", "pk_factor_v", "eta_cadss")}
    cols["female"] = np.array([p.sex == "female" for p in pts], dtype=float)
    cols["residual0"] = np.array([p.residual[0] for p in pts])
    return spec, pts, cols


def test_covariate_marginals_match_spec_and_card(big):
    spec, pts, c = big
    # weight and age: normal(mean, sd) clipped to 40–200 kg and 18–90 y
    _check_mean_sd(c["weight_kg"], *_clipped_normal(80.0, 15.0, 40.0, 200.0))
    _check_mean_sd(c["age_years"], *_clipped_normal(45.0, 12.0, 18.0, 90.0))
    assert c["weight_kg"].min() >= 40.0 and c["weight_kg"].max() <= 200.0
    assert c["age_years"].min() >= 18.0 and c["age_years"].max() <= 90.0
    # baseline MADRS: card mean (TRD 32) and SD (4.6), clipped to 20–60
    mu, sd = CARD.value("madrs_baseline_trd"), CARD.value("madrs_baseline_sd")
    _check_mean_sd(c["baseline_madrs"], *_clipped_normal(mu, sd, 20.0, 60.0))
    assert c["baseline_madrs"].min() >= 20.0 and c["baseline_madrs"].max() <= 60.0
    # sex: Bernoulli(female_fraction); race and comedication are arm-level constants
    p = spec.female_fraction
    assert abs(c["female"].mean() - p) < 5 * math.sqrt(p * (1 - p) / N)
    assert {pt.race for pt in pts} == {"caucasian"} and {pt.comedication for pt in pts} == {()}
    assert {pt.disorder for pt in pts} == {"trd"}


def test_clipping_barely_moves_the_default_population(big):
    """With the defaults the clipped means stay within 0.1 unit of the nominal ones (the
    documented means are the realised ones to that precision)."""
    _, _, c = big
    assert abs(c["weight_kg"].mean() - 80.0) < 0.1 + 5 * 15.0 / math.sqrt(N)
    assert abs(c["age_years"].mean() - 45.0) < 0.1 + 5 * 12.0 / math.sqrt(N)
    assert abs(c["baseline_madrs"].mean() - 32.0) < 0.1 + 5 * 4.6 / math.sqrt(N)
    # the share piled up at a bound is what the normal tail predicts (age 18: 1.2%)
    for x, lo, mu, sd in ((c["age_years"], 18.0, 45.0, 12.0),
                          (c["weight_kg"], 40.0, 80.0, 15.0),
                          (c["baseline_madrs"], 20.0, 32.0, 4.6)):
        q = norm.cdf((lo - mu) / sd)
        assert abs((x == lo).mean() - q) < 5 * math.sqrt(q * (1 - q) / N) + 1e-4


def test_random_effects_have_the_card_spreads(big):
    _, _, c = big
    for k in ("eta_placebo", "eta_emax", "eta_cadss", "residual0"):  # standard normal
        _check_mean_sd(c[k], 0.0, 1.0)
    # PK factors: log-normal, median 1, CV = pk_iiv_cv (0.3) on the natural scale
    cv = CARD.value("pk_iiv_cv")
    s = math.sqrt(math.log(1 + cv**2))
    for k in ("pk_factor_cl", "pk_factor_v"):
        assert (c[k] > 0).all()
        _check_mean_sd(np.log(c[k]), 0.0, s)
        m = math.exp(s**2 / 2)  # mean of the factor 1.044
        assert abs(c[k].mean() - m) < 5 * m * cv / math.sqrt(N)
        assert abs(c[k].std() / c[k].mean() - cv) < 0.02


def test_draws_are_uncorrelated(big):
    _, _, c = big
    keys = ["weight_kg", "age_years", "female", "baseline_madrs", "eta_placebo", "eta_emax",
            "pk_factor_cl", "pk_factor_v", "eta_cadss", "residual0"]
    r = np.corrcoef(np.array([c[k] for k in keys]))
    off = r[~np.eye(len(keys), dtype=bool)]
    assert np.abs(off).max() < 5 / math.sqrt(N), dict(zip(keys, np.abs(r).round(3), strict=True))


def test_baseline_per_disorder_uses_its_card_mean():
    n = 4000
    sd = CARD.value("madrs_baseline_sd")
    for d in ("mdd", "trd", "bipolar"):
        pts = sample_arm(PopulationSpec(disorder=d, n=n, seed=11), 0, n, n_visits=1)
        b = np.array([p.baseline_madrs for p in pts])
        mean, _ = _clipped_normal(CARD.value(f"madrs_baseline_{d}"), sd, 20.0, 60.0)
        assert abs(b.mean() - mean) < 5 * sd / math.sqrt(n), (d, b.mean(), mean)


def test_patient_is_the_same_whatever_n_and_start():
    spec = PopulationSpec(n=50, seed=5)
    whole = sample_arm(spec, 1, 12)
    part = sample_arm(spec, 1, 3, start=7)
    for a, b in zip(whole[7:10], part, strict=True):
        assert (a.weight_kg, a.baseline_madrs, a.eta_emax, a.eta_cadss) == \
               (b.weight_kg, b.baseline_madrs, b.eta_emax, b.eta_cadss)
    # what comes before the visit noise does not depend on the number of visits
    ref = sample_patient(spec, 0, 3, n_visits=64)
    for nv in (1, 8, 61):
        p = sample_patient(spec, 0, 3, n_visits=nv)
        assert (p.weight_kg, p.age_years, p.baseline_madrs, p.eta_placebo, p.eta_emax,
                p.pk_factor_cl, p.pk_factor_v) == \
               (ref.weight_kg, ref.age_years, ref.baseline_madrs, ref.eta_placebo,
                ref.eta_emax, ref.pk_factor_cl, ref.pk_factor_v)
        assert np.array_equal(p.residual, ref.residual[:nv])


def test_cadss_sensitivity_does_not_depend_on_visit_count():
    spec = PopulationSpec(n=50, seed=5)
    # the number of visits drawn must not change who the patient is: every trait, including
    # the CADSS sensitivity drawn after the visit noise, is the same for 1, 8, 64 or 70 visits
    # (the trial samples 64 noise draws; validate, calibration and sensitivity use fewer)
    ref = sample_patient(spec, 0, 3, n_visits=64)
    for nv in (1, 8, 61, 64, 70):
        p = sample_patient(spec, 0, 3, n_visits=nv)
        assert p.eta_cadss == ref.eta_cadss, nv
        k = min(nv, 64)
        assert np.array_equal(p.residual_suicidality[:k], ref.residual_suicidality[:k])
        assert np.array_equal(p.residual[:k], ref.residual[:k])
    long = sample_patient(spec, 0, 3, n_visits=70)
    assert np.array_equal(long.residual[:64], ref.residual)  # the trial's draws unchanged
    assert len(long.residual) == len(long.residual_suicidality) == 70
    assert len(set(long.residual[64:]) & set(long.residual_suicidality[64:])) == 0


def test_arms_and_seeds_give_independent_patients():
    n = 3000
    spec = PopulationSpec(n=n, seed=9)
    a0, a1 = (np.array([p.eta_emax for p in sample_arm(spec, k, n, 1)]) for k in (0, 1))
    other = np.array([p.eta_emax for p in
                      sample_arm(spec.model_copy(update={"seed": 10}), 0, n, 1)])
    assert abs(np.corrcoef(a0, a1)[0, 1]) < 5 / math.sqrt(n)
    assert abs(np.corrcoef(a0, other)[0, 1]) < 5 / math.sqrt(n)
    same = spec.model_copy(update={"same_patients_in_every_arm": True})
    assert [p.eta_emax for p in sample_arm(same, 3, 5)] == list(a0[:5])


def test_edge_specs_give_finite_patients():
    specs = [PopulationSpec(n=1, weight_kg_sd=0.0, age_sd=0.0, baseline_madrs_sd=0.0),
             PopulationSpec(weight_kg_mean=200.0, weight_kg_sd=60.0, age_mean=90.0,
                            age_sd=30.0, baseline_madrs_mean=60.0, baseline_madrs_sd=20.0,
                            female_fraction=1.0, seed=2**63 - 1),
             PopulationSpec(weight_kg_mean=40.0, weight_kg_sd=60.0, age_mean=18.0,
                            age_sd=30.0, baseline_madrs_mean=20.0, female_fraction=0.0)]
    for spec in specs:
        pts = sample_arm(spec, 7, 200)
        for p in pts:
            vals = [p.weight_kg, p.age_years, p.baseline_madrs, p.eta_placebo, p.eta_emax,
                    p.pk_factor_cl, p.pk_factor_v, p.eta_cadss]
            assert all(math.isfinite(v) for v in vals)
            assert np.isfinite(p.residual).all() and np.isfinite(p.residual_suicidality).all()
            assert 40 <= p.weight_kg <= 200 and 18 <= p.age_years <= 90
            assert 20 <= p.baseline_madrs <= 60
    one = sample_arm(specs[0], 0, 1)[0]
    assert (one.weight_kg, one.age_years) == (80.0, 45.0)
    assert one.baseline_madrs == CARD.value("madrs_baseline_trd")
    assert {p.sex for p in sample_arm(specs[1], 0, 50)} == {"female"}
    assert {p.sex for p in sample_arm(specs[2], 0, 50)} == {"male"}


def test_baseline_mean_is_honoured_or_refused():
    """A baseline mean given by the user is used as given; one the 20–60 clip would turn
    into a different mean (below the enrolment floor of 20) is refused, naming the field."""
    spec = PopulationSpec(baseline_madrs_mean=20.0, baseline_madrs_sd=0.0)
    assert sample_patient(spec, 0, 0).baseline_madrs == 20.0
    with pytest.raises(KetasimError) as e:
        parse_scenario({"population": {"baseline_madrs_mean": 0.0},
                        "arm": [{"name": "s", "control": "saline"}]})
    assert "population.baseline_madrs_mean" in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("field,value", [
    ("weight_kg_sd", -1.0), ("weight_kg_mean", 39.0), ("weight_kg_mean", float("nan")),
    ("age_mean", float("inf")), ("female_fraction", 1.5), ("baseline_madrs_sd", -0.1),
    ("n", 0), ("seed", -1), ("disorder", "psychosis"), ("race", "martian")])
def test_invalid_specs_name_the_field(field, value):
    with pytest.raises(KetasimError) as e:
        parse_scenario({"population": {field: value},
                        "arm": [{"name": "s", "control": "saline"}]})
    msg = str(e.value)
    assert f"population.{field}" in msg and "\n" not in msg, msg
