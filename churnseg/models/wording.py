"""Reasons in words a sales person can act on, one fact each.

Each feature the pipeline builds has a template (``TEMPLATES``): the pattern of its name, the
*fact* it states (the same fact over several windows - orders in 30, 90 or 365 days - is one
fact, and a customer's reasons name each fact once, in its strongest window), and a phrase.
A trend compares a window with the one before it; that earlier period must lie inside the
customer's known history, or the ratio says nothing (a customer known for 100 days has no "365
days before"); likewise a count over a window longer than the customer has been known.
Customer attributes, whose names come from the user's data, are named in plain words from
their column names.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd

# A phrase: (name match, value, typical value, other values of the row) -> words.
Phrase = Callable[[re.Match[str], float, float, Mapping[str, Any]], str]


@dataclass(frozen=True)
class Template:
    """How one family of features is said: its name pattern, the fact it states, the phrase.

    ``fact`` is the match's expansion naming the fact (``orders``, ``events_login``): features
    of one fact are said once per customer. ``window`` is the group holding a window in days,
    or 0; ``periods`` is how many such windows back the feature reads (a count: 1, a trend
    against the window before: 2), all of which must lie in the customer's known history.
    """

    pattern: str
    fact: str
    phrase: Phrase
    window: int = 0
    periods: int = 1


def _words(name: str) -> str:
    return name.replace("_", " ")


def _plural(word: str, count: float, plural: str | None = None) -> str:
    return word if round(count) == 1 else (plural or f"{word}s")


def _days_without_purchase(m: re.Match[str], v: float, r: float, row: Mapping[str, Any]) -> str:
    gap = row.get("gap_mean_days")
    text = f"no purchase for {v:.0f} days"
    if gap is not None and np.isfinite(gap) and gap > 0:
        text += f", {v / gap:.1f}x their usual gap"
    return text


def _event_count(m: re.Match[str], v: float, r: float, row: Mapping[str, Any]) -> str:
    return f"{v:.0f} {_plural(_words(m[1]), v)} in the last {m[2]} days (typical {r:.0f})"


TEMPLATES: list[Template] = [
    Template(r"^recency_days$", "recency", _days_without_purchase),
    Template(
        r"^overdue_ratio$",
        "recency",
        lambda m, v, r, row: f"last purchase {v:.1f}x their usual gap ago",
    ),
    Template(
        r"^overdue_z$",
        "recency",
        lambda m, v, r, row: (
            f"last purchase {v:.1f} standard deviations later than their usual rhythm"
        ),
    ),
    Template(
        r"^orders_trend_(\d+)d$",
        "orders_trend",
        lambda m, v, r, row: (
            f"orders in the last {m[1]} days at {v:.1f}x the {m[1]} days before (typical {r:.1f}x)"
        ),
        window=1,
    ),
    Template(
        r"^orders_(\d+)d$",
        "orders",
        lambda m, v, r, row: (
            f"{v:.0f} {_plural('order', v)} in the last {m[1]} days (typical {r:.0f})"
        ),
        window=1,
    ),
    Template(
        r"^spend_(\d+)d$",
        "spend",
        lambda m, v, r, row: f"spent {v:,.0f} in the last {m[1]} days (typical {r:,.0f})",
        window=1,
    ),
    Template(
        r"^spend_slope$",
        "spend",
        lambda m, v, r, row: (
            f"monthly spend flat (typical trend {r:+,.1f} a month)"
            if abs(v) < 0.05
            else f"monthly spend trending {'down' if v < 0 else 'up'} by {abs(v):,.1f} a month "
            f"(typical {r:+,.1f})"
        ),
    ),
    Template(
        r"^events_trend_(\d+)d$",
        "activity_trend",
        lambda m, v, r, row: (
            f"activity in the last {m[1]} days at {v:.1f}x the {m[1]} days before "
            f"(typical {r:.1f}x)"
        ),
        window=1,
        periods=2,
    ),
    Template(
        r"^events_(\d+)d$",
        "activity",
        lambda m, v, r, row: (
            f"{v:.0f} {_plural('event', v)} in the last {m[1]} days (typical {r:.0f})"
        ),
        window=1,
    ),
    Template(
        r"^days_since_event$",
        "activity",
        lambda m, v, r, row: f"no activity for {v:.0f} days (typical {r:.0f})",
    ),
    Template(
        r"^events_(\w+)_trend_(\d+)d$",
        r"events_\1_trend",
        lambda m, v, r, row: (
            f"{_words(m[1])} activity in the last {m[2]} days at {v:.1f}x the {m[2]} days "
            f"before (typical {r:.1f}x)"
        ),
        window=2,
        periods=2,
    ),
    Template(
        r"^events_(\w+)_value_(\d+)d$",
        r"events_\1",
        lambda m, v, r, row: (
            f"{_words(m[1])} total of {v:,.0f} in the last {m[2]} days (typical {r:,.0f})"
        ),
        window=2,
    ),
    Template(r"^events_(\w+)_(\d+)d$", r"events_\1", _event_count, window=2),
    Template(
        r"^days_since_(\w+)$",
        r"events_\1",
        lambda m, v, r, row: f"{v:.0f} days since the last {_words(m[1])} (typical {r:.0f})",
    ),
    Template(
        r"^sub_days_since_end$",
        "subscription",
        lambda m, v, r, row: f"subscription ended {v:.0f} days ago",
    ),
    Template(
        r"^sub_days_to_end$",
        "subscription_end",
        lambda m, v, r, row: f"subscription term ends in {v:.0f} days",
    ),
    Template(
        r"^sub_active$",
        "subscription",
        lambda m, v, r, row: "no active subscription" if v < 0.5 else "has an active subscription",
    ),
    Template(
        r"^sub_count$",
        "subscription_history",
        lambda m, v, r, row: f"{v:.0f} {_plural('subscription', v)} so far (typical {r:.0f})",
    ),
    Template(
        r"^sub_downgrades$",
        "plan_changes",
        lambda m, v, r, row: f"{v:.0f} plan {_plural('downgrade', v)}",
    ),
    Template(
        r"^sub_upgrades$",
        "plan_changes",
        lambda m, v, r, row: f"{v:.0f} plan {_plural('upgrade', v)} (typical {r:.0f})",
    ),
    Template(
        r"^sub_days_on_plan$",
        "plan_age",
        lambda m, v, r, row: f"{v:.0f} days on the current plan (typical {r:.0f})",
    ),
    Template(
        r"^sub_recurring_revenue$",
        "recurring_revenue",
        lambda m, v, r, row: f"recurring revenue of {v:,.2f} a month (typical {r:,.2f})",
    ),
    Template(
        r"^gap_mean_days$",
        "rhythm",
        lambda m, v, r, row: f"usually {v:.0f} days between purchases (typical {r:.0f})",
    ),
    Template(
        r"^gap_std_days$",
        "rhythm",
        lambda m, v, r, row: f"irregular buying: gaps vary by {v:.0f} days (typical {r:.0f})",
    ),
    Template(
        r"^btyd_p_alive$",
        "still_active",
        lambda m, v, r, row: f"probability still active {v:.0%} (typical {r:.0%})",
    ),
    Template(
        r"^btyd_expected_purchases$",
        "expected_purchases",
        lambda m, v, r, row: f"{v:.1f} purchases expected in the horizon (typical {r:.1f})",
    ),
    Template(
        r"^btyd_expected_(spend|value)$",
        "expected_value",
        lambda m, v, r, row: (
            f"expected {'spend per purchase' if m[1] == 'spend' else 'value'} of {v:,.0f} "
            f"(typical {r:,.0f})"
        ),
    ),
    Template(
        r"^btyd_frequency$",
        "repeat_purchases",
        lambda m, v, r, row: f"bought again in {v:.0f} {_plural('week', v)} (typical {r:.0f})",
    ),
    Template(
        r"^btyd_recency$",
        "buying_span",
        lambda m, v, r, row: (
            f"{v:.0f} {_plural('week', v)} between the first and last purchase (typical {r:.0f})"
        ),
    ),
    Template(
        r"^btyd_t$",
        "customer_age",
        lambda m, v, r, row: f"first purchase {v:.0f} {_plural('week', v)} ago (typical {r:.0f})",
    ),
    Template(
        r"^btyd_monetary_value$",
        "order_value",
        lambda m, v, r, row: f"repeat purchases worth {v:,.0f} on average (typical {r:,.0f})",
    ),
    Template(
        r"^basket_size$",
        "basket",
        lambda m, v, r, row: f"{v:.1f} items per order (typical {r:.1f})",
    ),
    Template(
        r"^purchase_units$",
        "basket",
        lambda m, v, r, row: f"{v:.0f} items bought in all (typical {r:.0f})",
    ),
    Template(
        r"^n_categories$",
        "categories",
        lambda m, v, r, row: (
            f"buys in {v:.0f} {_plural('category', v, 'categories')} (typical {r:.0f})"
        ),
    ),
    Template(
        r"^top_category_share$",
        "categories",
        lambda m, v, r, row: f"{v:.0%} of items in one category (typical {r:.0%})",
    ),
    Template(
        r"^category_entropy$",
        "categories",
        lambda m, v, r, row: f"spread over categories {v:.2f} (typical {r:.2f})",
    ),
    Template(
        r"^frequency$",
        "purchases",
        lambda m, v, r, row: f"{v:.0f} {_plural('purchase', v)} in total (typical {r:.0f})",
    ),
    Template(
        r"^monetary_mean$",
        "order_value",
        lambda m, v, r, row: f"average order of {v:,.0f} (typical {r:,.0f})",
    ),
    Template(
        r"^monetary_max$",
        "order_value",
        lambda m, v, r, row: f"largest order {v:,.0f} (typical {r:,.0f})",
    ),
    Template(
        r"^monetary_total$",
        "lifetime_spend",
        lambda m, v, r, row: f"lifetime spend of {v:,.0f} (typical {r:,.0f})",
    ),
    Template(
        r"^tenure_days$",
        "customer_age",
        lambda m, v, r, row: f"customer for {v:.0f} days (typical {r:.0f})",
    ),
    Template(
        r"^return_rate$",
        "returns",
        lambda m, v, r, row: f"{v:.0%} of orders returned (typical {r:.0%})",
    ),
    Template(
        r"^channel_share_(\w+)$",
        "channels",
        lambda m, v, r, row: f"{v:.0%} of orders via {_words(m[1])} (typical {r:.0%})",
    ),
    Template(
        r"^(\w+)_age_years$",
        r"\1",
        lambda m, v, r, row: f"{_words(m[1])} {v:.0f} years ago (typical {r:.0f})",
    ),
]


def _number(value: float) -> str:
    """Return a number as a person writes it: whole where it is, two decimals below 100."""
    if float(value).is_integer() or abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:,.2f}"


def _attribute(m: re.Match[str], v: float, r: float, row: Mapping[str, Any]) -> str:
    if v in (0.0, 1.0) and r in (0.0, 1.0):  # a yes/no attribute, read as 0/1
        return f"{_words(m[1])}: {'yes' if v else 'no'}"
    return f"{_words(m[1])} {_number(v)} (typical {_number(r)})"


# A feature no template knows (a customer attribute): its column name in words.
_NUMBER = Template(r"^(.+)$", r"\1", _attribute)


@lru_cache(maxsize=2048)
def _template(feature: str) -> tuple[Template, re.Match[str]]:
    """Return the template of ``feature`` and its name match (matched once per feature)."""
    for template in TEMPLATES:
        match = re.search(template.pattern, feature)
        if match is not None:
            return template, match
    match = re.search(_NUMBER.pattern, feature)
    assert match is not None  # ".+" matches every name
    return _NUMBER, match


def fact_of(feature: str) -> str:
    """Return the fact ``feature`` states (features of one fact differ only by window)."""
    template, match = _template(feature)
    return match.expand(template.fact)


def history_days(feature: str) -> int:
    """Return the days of history a feature reads back from the cutoff (0: not windowed).

    A count over the last 90 days reads 90; a trend against the 90 days before reads 180.
    """
    template, match = _template(feature)
    return int(match[template.window]) * template.periods if template.window else 0


def describe(feature: str, value: Any, reference: Any, row: Mapping[str, Any]) -> str:
    """Return one plain-language reason for ``feature`` having ``value`` (vs ``reference``)."""
    try:
        v, r = float(value), float(reference)
    except (TypeError, ValueError):  # a category, against the lowest-risk one
        return f"{_words(feature)}: {value} (lowest risk: {reference})"
    template, match = _template(feature)
    return template.phrase(match, v, r, row)


def top_reasons(
    contributions: pd.DataFrame,
    frame: pd.DataFrame,
    reference: Mapping[str, Any],
    k: int = 3,
) -> pd.Series:
    """Return, per row, the ``k`` strongest facts raising risk, as reasons joined by "; ".

    Only positive attributions of values the customer actually has count (a missing value, e.g.
    days on a plan for a customer without one, is not a reason a person can act on); a fact is
    named once, in its strongest feature (orders in 90 days, not also in 30 and 365); a window
    counts only when it lies inside the customer's known history (``tenure_days``), and a trend
    only when the period before it does too. A customer with nothing above typical gets "".
    """
    names = [str(c) for c in contributions.columns]
    values = np.where(frame[names].notna().to_numpy(), contributions.to_numpy(), -np.inf)
    if "tenure_days" in frame:
        tenure = np.nan_to_num(frame["tenure_days"].to_numpy(dtype="float64"), nan=0.0)
        for j, name in enumerate(names):
            days = history_days(name)
            if days:  # a window reaching before the customer was known says nothing of them
                values[:, j] = np.where(tenure >= days, values[:, j], -np.inf)
    facts = [fact_of(name) for name in names]
    order = np.argsort(-values, axis=1, kind="stable")
    # Column arrays, not row dicts: building a dict per row cost most of a 1M-row scoring run.
    columns = [frame[name].to_numpy() for name in names]
    gap = frame["gap_mean_days"].to_numpy() if "gap_mean_days" in frame else None
    texts = []
    for i in range(len(frame)):
        row = {"gap_mean_days": gap[i]} if gap is not None else {}
        parts: list[str] = []
        said: set[str] = set()
        for j in order[i]:
            if values[i, j] <= 0 or len(parts) == k:
                break
            if facts[j] in said:
                continue
            said.add(facts[j])
            parts.append(describe(names[j], columns[j][i], reference[names[j]], row))
        texts.append("; ".join(parts))
    return pd.Series(texts, index=frame.index, name="top_reasons")


def churned_reasons(frame: pd.DataFrame) -> pd.Series:
    """Return why each customer counts as churned already (read for those not at risk).

    A contract label says so by the ``at_risk`` flag: the last subscription ended (and when),
    or the churn date passed. An inactivity label says so by recency: no purchase for longer
    than the at-risk population allows.
    """
    texts = np.full(len(frame), "churned already", dtype=object)
    flagged = frame["at_risk"].fillna(False).to_numpy(dtype=bool) if "at_risk" in frame else None
    if "recency_days" in frame:
        days = frame["recency_days"].to_numpy(dtype="float64")
        texts = np.where(
            np.isfinite(days),
            [f"churned already: no purchase for {d:.0f} days" for d in np.nan_to_num(days)],
            texts,
        )
    if flagged is not None and "sub_active" in frame:
        ended = frame["sub_days_since_end"].to_numpy(dtype="float64")
        contract = [
            f"churned already: subscription ended {d:.0f} days ago"
            if np.isfinite(d)
            else "churned already: no active subscription"
            for d in ended
        ]
        texts = np.where(flagged, texts, contract)
    elif flagged is not None:
        texts = np.where(flagged, texts, "churned already: churn date passed")
    return pd.Series(texts, index=frame.index, name="top_reasons", dtype=object)
