"""BG/NBD and Gamma-Gamma against published CDNOW fits and an independent integration."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import integrate
from scipy.optimize import check_grad

from churnseg.features.btyd import BTYD_FEATURES, BetaGeoModel, GammaGammaModel, btyd_features

CDNOW = Path(__file__).parent / "data" / "cdnow_customers_summary_with_transactions.csv"
# Fader, Hardie and Lee (2005), Marketing Science 24(2), on the 2,357-customer CDNOW sample in
# weeks: r, alpha, a, b and the log-likelihood; and the Gamma-Gamma fit of "RFM and CLV" (JMR
# 2005) on its 946 customers with repeat purchases.
PUBLISHED_BGNBD = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
PUBLISHED_LL = -9582.4
PUBLISHED_GAMMA_GAMMA = {"p": 6.25, "q": 3.74, "v": 15.44}


@pytest.fixture(scope="module")
def cdnow() -> pd.DataFrame:
    return pd.read_csv(CDNOW)


@pytest.fixture(scope="module")
def bgnbd(cdnow: pd.DataFrame) -> BetaGeoModel:
    return BetaGeoModel().fit(cdnow.x, cdnow.t_x, cdnow["T"])


def test_bgnbd_reproduces_the_published_cdnow_fit(bgnbd: BetaGeoModel) -> None:
    assert bgnbd.converged_ and bgnbd.n_customers_ == 2357
    for name, value in PUBLISHED_BGNBD.items():
        assert bgnbd.params_[name] == pytest.approx(value, rel=2e-3), name
    assert bgnbd.log_likelihood_ == pytest.approx(PUBLISHED_LL, abs=0.1)


def test_gamma_gamma_reproduces_the_published_cdnow_fit(cdnow: pd.DataFrame) -> None:
    model = GammaGammaModel().fit(cdnow.x, cdnow.zbar)
    assert model.n_customers_ == 946, "fitted on customers with repeat purchases only"
    for name, value in PUBLISHED_GAMMA_GAMMA.items():
        assert model.params_[name] == pytest.approx(value, rel=2e-3), name


def test_the_paper_example_customer(bgnbd: BetaGeoModel) -> None:
    # FHL (2005), section 5: x = 2, t_x = 30.43, T = 38.86 expects 1.226 purchases in 39 weeks.
    expected = bgnbd.predict_purchases(39, [2], [30.43], [38.86])
    assert expected[0] == pytest.approx(1.226, abs=5e-4)


def _integral(f: Callable[[float], float], upper: float = 1.0) -> float:
    return float(integrate.quad(f, 0.0, upper, epsabs=0.0, epsrel=1e-9, limit=200)[0])


def _p_integral(g: Callable[[float], float], a: float, b: float) -> float:
    """Integral of g(p) p^(a-1) (1-p)^(b-1) over (0, 1), with p = u^(1/a) removing the pole."""
    return _integral(lambda u: g(u ** (1 / a)) * (1 - u ** (1 / a)) ** (b - 1) / a)


def _lambda_integral(x: int, r: float, rate: float) -> float:
    """Integral of lambda^(x+r-1) exp(-rate lambda); lambda = v^(1/(x+r)) removes a pole."""
    k = x + r
    if k >= 1:
        return _integral(lambda lam: lam ** (k - 1) * math.exp(-rate * lam), upper=200.0 / rate)
    return _integral(lambda v: math.exp(-rate * v ** (1 / k)) / k, upper=(200.0 / rate) ** k)


def _p_alive_by_integration(x: int, tx: float, age: float, m: BetaGeoModel) -> float:
    """P(alive) by Bayes over (lambda, p): the likelihood's alive term over the total.

    Alive: (1-p)^x lambda^x e^(-lambda T); dropped out after the last purchase:
    p (1-p)^(x-1) lambda^x e^(-lambda t_x). Both integrals separate in lambda and p; the
    priors' normalising constants cancel.
    """
    alive = _p_integral(lambda p: (1 - p) ** x, m.a_, m.b_) * _lambda_integral(
        x, m.r_, m.alpha_ + age
    )
    if x == 0:
        return 1.0 if alive > 0 else float("nan")
    dead = _p_integral(lambda p: p * (1 - p) ** (x - 1), m.a_, m.b_) * _lambda_integral(
        x, m.r_, m.alpha_ + tx
    )
    return alive / (alive + dead)


def _purchases_by_integration(t: float, x: int, tx: float, age: float, m: BetaGeoModel) -> float:
    """E[Y(t)] = P(alive) E[(1 - exp(-lambda p t)) / p] over the posterior given alive.

    Given alive, lambda ~ Gamma(r + x, alpha + T) with T = ``age`` (its Laplace transform gives
    the lambda part) and p ~ Beta(a, b + x), integrated numerically instead of through the 2F1
    closed form.
    """
    r, alpha, a, b = m.r_, m.alpha_, m.a_, m.b_ + x

    def future(p: float) -> float:
        return (1 - ((alpha + age) / (alpha + age + p * t)) ** (r + x)) / p

    mean = _p_integral(future, a, b) / _p_integral(lambda p: 1.0, a, b)
    return _p_alive_by_integration(x, tx, age, m) * mean


@pytest.mark.parametrize(
    ("x", "tx", "age"), [(0, 0.0, 38.86), (2, 30.43, 38.86), (1, 1.71, 38.86), (7, 29.43, 35.0)]
)
def test_predictions_match_an_independent_integration(
    bgnbd: BetaGeoModel, x: int, tx: float, age: float
) -> None:
    p_alive = bgnbd.predict_p_alive([x], [tx], [age])[0]
    assert p_alive == pytest.approx(_p_alive_by_integration(x, tx, age, bgnbd), rel=1e-5)
    expected = bgnbd.predict_purchases(39, [x], [tx], [age])[0]
    assert expected == pytest.approx(_purchases_by_integration(39, x, tx, age, bgnbd), rel=1e-5)


def test_p_alive_falls_with_time_since_the_last_purchase(bgnbd: BetaGeoModel) -> None:
    p = bgnbd.predict_p_alive([3, 3, 3, 0], [30.0, 20.0, 5.0, 0.0], [38.0, 38.0, 38.0, 38.0])
    assert p[0] > p[1] > p[2] and p[3] == 1.0, "no repeat purchase: alive by the model's rule"


def test_analytic_gradients_match_finite_differences(cdnow: pd.DataFrame) -> None:
    x, tx, age = (cdnow[c].to_numpy(float)[:300] for c in ("x", "t_x", "T"))
    w = np.ones_like(x)
    theta = np.log([0.3, 4.0, 0.8, 2.5])
    err = check_grad(
        lambda p: BetaGeoModel._log_likelihood(p, x, tx, age, w)[0],
        lambda p: BetaGeoModel._log_likelihood(p, x, tx, age, w)[1],
        theta,
    )
    assert err < 1e-5, f"BG/NBD gradient off by {err}"
    keep = x > 0
    m = cdnow.zbar.to_numpy(float)[:300][keep]
    err = check_grad(
        lambda p: GammaGammaModel._log_likelihood(p, x[keep], m, w[keep])[0],
        lambda p: GammaGammaModel._log_likelihood(p, x[keep], m, w[keep])[1],
        np.log([6.0, 3.5, 15.0]),
    )
    assert err < 1e-5, f"Gamma-Gamma gradient off by {err}"


def test_fit_rejects_an_impossible_summary() -> None:
    with pytest.raises(ValueError, match="1 of 2 rows break 0 <= recency <= T"):
        BetaGeoModel().fit([1, 2], [3.0, 5.0], [4.0, 4.0])


def test_gamma_gamma_spend_shrinks_towards_the_population_mean(cdnow: pd.DataFrame) -> None:
    model = GammaGammaModel().fit(cdnow.x, cdnow.zbar)
    p, q, v = model.p_, model.q_, model.v_
    population = p * v / (q - 1)
    spend = model.predict_spend([0, 1, 10], [0.0, 100.0, 100.0])
    assert spend[0] == pytest.approx(population), "no repeat purchase: the population mean"
    assert population < spend[1] < spend[2] < 100.0, "more purchases, more weight on the own mean"
    assert spend[1] == pytest.approx(p * (v + 100.0) / (p + q - 1))


def test_btyd_features_fit_each_snapshot_and_leave_non_buyers_null(cdnow: pd.DataFrame) -> None:
    summary = pd.DataFrame(
        {
            "btyd_frequency": cdnow.x,
            "btyd_recency": cdnow.t_x,
            "btyd_t": cdnow["T"],
            "btyd_monetary_value": cdnow.zbar,
        }
    )
    summary.loc[0, "btyd_t"] = np.nan  # a customer without a purchase
    out, bgnbd, gamma = btyd_features(summary, horizon_days=7 * 39, period_days=7)
    assert list(out.columns) == list(BTYD_FEATURES) and out.index.equals(summary.index)
    assert out.loc[0].isna().all(), "no purchase: no BTYD prediction"
    assert bgnbd is not None and gamma is not None
    row = out.loc[1]  # x = 1, t_x = 1.71, T = 38.86
    assert row.btyd_expected_purchases == pytest.approx(
        bgnbd.predict_purchases(39, [1], [1.71], [38.86])[0]
    ), "the horizon is converted to periods: 273 days = 39 weeks"
    assert row.btyd_expected_value == pytest.approx(
        row.btyd_expected_purchases * row.btyd_expected_spend
    )
    tiny, none_fitted, _ = btyd_features(summary.head(1), 90, 7)
    assert none_fitted is None and tiny.isna().all().all(), "too little history: nulls"


def test_unique_rows_are_numpys_sorted_unique_rows_with_counts_and_inverse() -> None:
    from churnseg.features.btyd import _unique_rows

    rng = np.random.default_rng(7)
    x = rng.integers(0, 4, 500).astype(float)
    t = rng.integers(0, 3, 500).astype(float) * 0.5
    (ux, ut), counts, inverse = _unique_rows(x, t)
    expected, expected_counts = np.unique(np.column_stack([x, t]), axis=0, return_counts=True)
    assert np.array_equal(np.column_stack([ux, ut]), expected)
    assert np.array_equal(counts, expected_counts) and counts.sum() == 500
    assert np.array_equal(ux[inverse], x) and np.array_equal(ut[inverse], t)
