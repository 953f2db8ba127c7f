"""Deterministic synthetic sample data for customer segmentation and churn modelling.

The generator simulates a non-contractual retailer month by month, vectorised over customers:

* every customer belongs to one latent behaviour segment (``SEGMENTS``) with its own purchase
  rate, basket size, price level, category and channel preferences, return propensity, login
  habits and subscription appetite;
* customers sign up between a year before ``start`` and 30 days before ``end``, more of them
  later (growth); activity before ``start`` is not written;
* purchases per month are Poisson with a seasonal factor (December peak, summer dip) and a rate
  ``base_rate * exp(-decline * months since the decline began)``: ``decline`` is 0 for most
  customers and positive for a minority whose decline begins at a random time within 18 months
  of signup (so customers who joined before ``start`` do not all arrive already faded);
* each order has 1 + Poisson lines (category, product, quantity and log-normal unit price drawn
  per line); some lines are later returned in part or whole as a negative ``is_return`` row;
* churn is a monthly hazard ``sigmoid(a + b*decline_effect + c*recent_complaints + d[plan]
  + e*low_frequency)`` (see ``HAZARD``); after churn a customer makes no purchases, returns,
  logins or any other events, and an open subscription ends on the churn day;
* optional dirty rows (duplicates, bad amounts, null or unknown ids, future or sentinel dates,
  malformed date strings in CSV, padded categories, duplicate customers) are added at random
  positions and counted per kind.

Everything derives from ``np.random.default_rng`` streams spawned from ``SampleSpec.seed``, so the
same spec gives identical tables. Large string columns are built from a small array of unique
values with ``take`` or with a fixed-width byte layout, never by formatting per row in Python.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from churnseg.pipelines.config import SAMPLE_TABLES

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
AnyArray = npt.NDArray[Any]

DAY = 86_400
RATE_PERIOD = 30 * DAY  # purchase and event rates are per 30 days
AVG_MONTH = 30.4375 * DAY
_EPOCH = datetime(1970, 1, 1)

# The tables a config reads from the sample, plus the generator's own truth.
TABLES = (*SAMPLE_TABLES, "ground_truth")

REGIONS = ("north", "south", "east", "west", "central")
REGION_WEIGHTS = (0.22, 0.24, 0.18, 0.20, 0.16)
INDUSTRIES = ("retail", "manufacturing", "services", "healthcare", "public", "technology")
INDUSTRY_WEIGHTS = (0.25, 0.20, 0.20, 0.12, 0.08, 0.15)
# One owner per this many customers; their capacity leaves ~20% room in all.
CUSTOMERS_PER_OWNER = 150
_OWNER_NAMES = ("Ana", "Ben", "Chloe", "Dev", "Eli", "Fatima", "Goran", "Hana", "Ivo", "Jun")
_OWNER_SURNAMES = ("Okafor", "Meyer", "Santos", "Kowalski", "Nakamura", "Haddad", "Brown")
ACQUISITION_CHANNELS = ("organic", "paid_search", "social", "referral", "partner")
CATEGORIES = ("grocery", "electronics", "fashion", "home", "beauty", "sports", "toys", "books")
CHANNELS = ("web", "app", "store")
EVENT_TYPES = ("login", "email_open", "support_ticket", "complaint")
PLANS = ("basic", "plus", "premium")
PLAN_PRICES = (9.99, 19.99, 39.99)

# Per category: log-price offset, mean extra units per line, return-propensity multiplier.
_CATEGORY_PRICE_OFFSET = np.array([-0.45, 0.70, 0.15, 0.30, -0.20, 0.15, 0.00, -0.35])
_CATEGORY_EXTRA_UNITS = np.array([1.20, 0.05, 0.25, 0.20, 0.50, 0.20, 0.30, 0.15])
_CATEGORY_RETURN_MULT = np.array([0.30, 1.20, 2.00, 1.00, 0.70, 1.10, 0.80, 0.50])
_PRODUCTS_PER_CATEGORY = np.array([400, 250, 500, 300, 250, 200, 200, 300])


@dataclass(frozen=True)
class SegmentProfile:
    """Behaviour parameters of one latent customer segment.

    Attributes:
        name: Segment name written to ``ground_truth.latent_segment_name``.
        share: Expected share of customers.
        rate_median: Median purchases (orders) per 30 days; per-customer rates are log-normal.
        rate_sigma: Log-scale spread of per-customer purchase rates.
        price_median: Median unit price; per-line prices are log-normal around the customer's.
        extra_lines: Mean number of extra lines per order (lines = 1 + Poisson).
        return_prob: Probability that a line is (partly) returned, before category multipliers.
        category_weights: Preference over ``CATEGORIES``.
        channel_weights: Preference over ``CHANNELS``.
        login_rate: Median logins per 30 days.
        subscribe_prob: Probability of taking a subscription after signing up.
        plan_weights: Preference over ``PLANS`` for the first subscription.
        decline_prob: Probability that the customer's purchase rate declines over time.
        key_account_prob: Probability of being flagged as a key account.
    """

    name: str
    share: float
    rate_median: float
    rate_sigma: float
    price_median: float
    extra_lines: float
    return_prob: float
    category_weights: tuple[float, ...]
    channel_weights: tuple[float, float, float]
    login_rate: float
    subscribe_prob: float
    plan_weights: tuple[float, float, float]
    decline_prob: float
    key_account_prob: float


SEGMENTS: tuple[SegmentProfile, ...] = (
    SegmentProfile(
        name="vip",
        share=0.1,
        rate_median=3.0,
        rate_sigma=0.20,
        price_median=60.0,
        extra_lines=0.8,
        return_prob=0.030,
        category_weights=(0.08, 0.22, 0.20, 0.18, 0.10, 0.10, 0.06, 0.06),
        channel_weights=(0.45, 0.45, 0.10),
        login_rate=1.4,
        subscribe_prob=0.68,
        plan_weights=(0.20, 0.35, 0.45),
        decline_prob=0.10,
        key_account_prob=0.10,
    ),
    SegmentProfile(
        name="regular",
        share=0.32,
        rate_median=0.9,
        rate_sigma=0.20,
        price_median=21.0,
        extra_lines=0.4,
        return_prob=0.035,
        category_weights=(0.20, 0.10, 0.14, 0.14, 0.12, 0.10, 0.10, 0.10),
        channel_weights=(0.40, 0.30, 0.30),
        login_rate=0.52,
        subscribe_prob=0.45,
        plan_weights=(0.45, 0.40, 0.15),
        decline_prob=0.18,
        key_account_prob=0.01,
    ),
    SegmentProfile(
        name="bargain",
        share=0.16,
        rate_median=3.0,
        rate_sigma=0.20,
        price_median=7.0,
        extra_lines=0.3,
        return_prob=0.080,
        category_weights=(0.34, 0.03, 0.12, 0.08, 0.18, 0.05, 0.14, 0.06),
        channel_weights=(0.35, 0.55, 0.10),
        login_rate=0.7,
        subscribe_prob=0.38,
        plan_weights=(0.70, 0.25, 0.05),
        decline_prob=0.15,
        key_account_prob=0.005,
    ),
    SegmentProfile(
        name="occasional",
        share=0.24,
        rate_median=0.2,
        rate_sigma=0.25,
        price_median=70.0,
        extra_lines=0.6,
        return_prob=0.025,
        category_weights=(0.06, 0.24, 0.12, 0.22, 0.06, 0.16, 0.06, 0.08),
        channel_weights=(0.40, 0.10, 0.50),
        login_rate=0.15,
        subscribe_prob=0.33,
        plan_weights=(0.50, 0.35, 0.15),
        decline_prob=0.15,
        key_account_prob=0.01,
    ),
    SegmentProfile(
        name="trial",
        share=0.18,
        rate_median=0.2,
        rate_sigma=0.25,
        price_median=8.0,
        extra_lines=0.2,
        return_prob=0.050,
        category_weights=(0.14, 0.04, 0.26, 0.06, 0.22, 0.06, 0.08, 0.14),
        channel_weights=(0.50, 0.40, 0.10),
        login_rate=0.28,
        subscribe_prob=0.38,
        plan_weights=(0.80, 0.15, 0.05),
        decline_prob=0.35,
        key_account_prob=0.005,
    ),
)


@dataclass(frozen=True)
class HazardModel:
    """Coefficients of the monthly churn hazard ``sigmoid(logit)``.

    ``logit = intercept + decline * (1 - rate_t / base_rate) + complaint * min(complaints in the
    last 3 months, 3) + plan[none, basic, plus, premium] + low_frequency * clip(-log(rate_t), 0,
    3)``, with ``rate_t`` in purchases per 30 days. The hazard applies only inside the history
    window, scaled to the exposed part of each month.
    """

    intercept: float = -4.35
    decline: float = 3.2
    complaint: float = 0.9
    plan: tuple[float, float, float, float] = (0.35, -0.35, -0.20, 0.05)
    low_frequency: float = 0.55


HAZARD = HazardModel()

_FRICTION_SHARE = 0.12  # customers with many support tickets and complaints
_TICKET_RATE = (0.03, 0.25)  # per 30 days: (normal, high friction)
_COMPLAINT_RATE = (0.006, 0.12)
_EMAIL_RATE = 0.18
_PLAN_CHANGE_PROB = 0.02  # per month while subscribed
_PLAN_CANCEL_PROB = 0.006  # per month, cancelling without churning
_GROWTH = 2.2  # signups per day grow by exp(_GROWTH) from the first to the last signup day
_DECLINE_RANGE = (0.04, 0.20)  # per month
_DECLINE_ONSET_MONTHS = 18.0  # decline starts uniformly within this many months of signup

_TRANSACTION_DIRTY_WEIGHTS: dict[str, float] = {
    "duplicate_row": 0.18,
    "repeated_order_line": 0.10,
    "amount_nan": 0.07,
    "amount_absurd": 0.04,
    "amount_zero": 0.05,
    "null_customer_id": 0.10,
    "unknown_customer_id": 0.09,
    "future_timestamp": 0.08,
    "sentinel_date": 0.06,
    "padded_category": 0.13,  # in place: existing rows get " Grocery " / "GROCERY"
}
_CSV_EXTRA_DIRTY_WEIGHTS: dict[str, float] = {
    "malformed_date_string": 0.05,  # added rows whose timestamp text does not parse
    "mixed_date_format": 0.05,  # in place: existing rows written as "31/01/2024 10:00"
}
_IN_PLACE_KINDS = frozenset({"padded_category", "mixed_date_format", "padded_region"})
_EVENT_DIRTY_WEIGHTS: dict[str, float] = {
    "duplicate_row": 0.4,
    "null_customer_id": 0.2,
    "unknown_customer_id": 0.2,
    "future_timestamp": 0.2,
}
_EVENT_DIRTY_SHARE = 0.25  # events get dirty_fraction * this share of their rows
_CUSTOMER_DIRTY_WEIGHTS: dict[str, float] = {"duplicate_customer_row": 0.5, "padded_region": 0.5}
_CUSTOMER_DIRTY_SHARE = 0.3
_MALFORMED_DATES = ("2024-13-45 10:00:00", "not a date", "2024-02-30 25:61:00", "??")
_FUTURE_YEAR = 2030
_SENTINEL = datetime(1900, 1, 1)
_CSV_BATCH_ROWS = 500_000
_FORMAT_CHUNK = 1_000_000  # rows formatted as text at a time


@dataclass(frozen=True)
class SampleSpec:
    """What sample to generate.

    Attributes:
        customers: Number of customers.
        seed: Seed of every random stream; the same spec always gives the same tables.
        start: First day of transaction and event history.
        end: The sample's "today": data ends strictly before this day.
        dirty_fraction: Extra dirty transaction rows as a share of clean transaction rows; the
            customers and events tables get a smaller dose. ``0`` gives clean tables.
        file_format: File format written by ``write_sample``. With ``"csv"`` the transactions
            ``timestamp`` column is text so that malformed and mixed-format dates can appear.
    """

    customers: int = 2000
    seed: int = 0
    start: date = date(2023, 1, 1)
    end: date = date(2026, 1, 1)
    dirty_fraction: float = 0.01
    file_format: Literal["parquet", "csv"] = "parquet"

    def __post_init__(self) -> None:
        if self.customers < 1:
            raise ValueError(f"customers must be at least 1, got {self.customers}")
        if self.seed < 0:
            raise ValueError(f"seed must be non-negative, got {self.seed}")
        if (self.end - self.start).days < 90:
            raise ValueError(f"end {self.end} must be at least 90 days after start {self.start}")
        if not 0.0 <= self.dirty_fraction <= 0.5:
            raise ValueError(f"dirty_fraction must be in [0, 0.5], got {self.dirty_fraction}")
        if self.file_format not in ("parquet", "csv"):
            raise ValueError(f"file_format must be 'parquet' or 'csv', got {self.file_format!r}")

    def to_dict(self) -> dict[str, Any]:
        """Return the spec as JSON-ready values (dates as ISO strings)."""
        out = asdict(self)
        out["start"] = self.start.isoformat()
        out["end"] = self.end.isoformat()
        return out


# --------------------------------------------------------------------------------------------
# small helpers


def _seconds(moment: date | datetime) -> int:
    """Return seconds since 1970-01-01 for a date (midnight) or naive datetime."""
    if not isinstance(moment, datetime):
        moment = datetime(moment.year, moment.month, moment.day)
    return int((moment - _EPOCH) // timedelta(seconds=1))


def _day_floor(seconds: IntArray) -> IntArray:
    """Return the midnight at or before each timestamp (seconds)."""
    return (seconds // DAY) * DAY


def _sigmoid(x: FloatArray) -> FloatArray:
    return 1.0 / (1.0 + np.exp(-x))


def _categorical(
    rng: np.random.Generator, groups: AnyArray, weights: AnyArray, dtype: type = np.int64
) -> AnyArray:
    """Draw one category per row, with row ``i`` using the weight row ``weights[groups[i]]``."""
    cumulative = np.cumsum(weights / weights.sum(axis=1, keepdims=True), axis=1)
    cumulative[:, -1] = 1.0
    u = rng.random(groups.size)
    out: AnyArray = np.empty(groups.size, dtype=dtype)
    for g in range(weights.shape[0]):
        rows = np.flatnonzero(groups == g)
        out[rows] = np.searchsorted(cumulative[g], u[rows], side="right")
    return np.minimum(out, weights.shape[1] - 1)


def _split_counts(total: int, weights: dict[str, float]) -> dict[str, int]:
    """Split ``total`` over the keys in proportion to ``weights`` (largest remainders, stable)."""
    names = sorted(weights)
    w = np.array([weights[k] for k in names], dtype=np.float64)
    exact = total * w / w.sum()
    counts = np.floor(exact).astype(np.int64)
    remainder = total - int(counts.sum())
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[:remainder]] += 1
    return {k: int(c) for k, c in zip(names, counts, strict=True)}


def _fixed_width_strings(
    prefix: str, numbers: AnyArray, digits: int, valid: BoolArray | None = None
) -> pa.Array:
    """Return ``prefix`` + zero-padded ``numbers`` as an Arrow string array, built byte-wise."""
    n = int(numbers.size)
    head = prefix.encode()
    width = len(head) + digits
    buf = np.empty((n, width), dtype=np.uint8)
    if head:
        buf[:, : len(head)] = np.frombuffer(head, dtype=np.uint8)
    x = numbers.astype(np.int64, copy=True)
    for k in range(width - 1, len(head) - 1, -1):
        buf[:, k] = x % 10 + 48
        x //= 10
    return _strings_from_matrix(buf, valid)


def _strings_from_matrix(buf: AnyArray, valid: BoolArray | None = None) -> pa.Array:
    """Wrap an ``(n, width)`` uint8 matrix as an Arrow string array of fixed-width values."""
    n, width = buf.shape
    if n * width >= 2**31:
        raise ValueError("string column too large for 32-bit offsets")
    offsets = np.arange(n + 1, dtype=np.int32) * np.int32(width)
    bitmap = None
    null_count = 0
    if valid is not None and not bool(valid.all()):
        bitmap = pa.py_buffer(np.packbits(valid, bitorder="little"))
        null_count = int(n - valid.sum())
    return pa.StringArray.from_buffers(
        n, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(buf)), bitmap, null_count
    )


def _format_timestamps(
    seconds: IntArray, valid: BoolArray | None = None, day_first: bool = False
) -> pa.Array:
    """Return timestamps (seconds) as text, built byte-wise for years 0-9999.

    Args:
        seconds: Timestamps in seconds since 1970-01-01.
        valid: Rows to keep; the others become null.
        day_first: Write ``DD/MM/YYYY HH:MM`` instead of ``YYYY-MM-DD HH:MM:SS``.

    Returns:
        An Arrow string array.

    """
    width = 16 if day_first else 19
    buf = np.empty((seconds.size, width), dtype=np.uint8)
    for lo in range(0, seconds.size, _FORMAT_CHUNK):
        _format_chunk(seconds[lo : lo + _FORMAT_CHUNK], buf[lo : lo + _FORMAT_CHUNK], day_first)
    return _strings_from_matrix(buf, valid)


def _format_chunk(seconds: IntArray, buf: AnyArray, day_first: bool) -> None:
    """Write the text of ``seconds`` into the rows of ``buf`` (see ``_format_timestamps``)."""
    days = np.floor_divide(seconds, DAY)
    secs = seconds - days * DAY
    d64 = days.astype("datetime64[D]")
    month_start = d64.astype("datetime64[M]")
    year = d64.astype("datetime64[Y]").astype(np.int64) + 1970
    month = month_start.astype(np.int64) % 12 + 1
    day = (d64 - month_start).astype(np.int64) + 1
    hour, minute, second = secs // 3600, secs // 60 % 60, secs % 60
    if day_first:
        parts = [(day, 2, "/"), (month, 2, "/"), (year, 4, " "), (hour, 2, ":"), (minute, 2, "")]
    else:
        parts = [
            (year, 4, "-"),
            (month, 2, "-"),
            (day, 2, " "),
            (hour, 2, ":"),
            (minute, 2, ":"),
            (second, 2, ""),
        ]
    pos = 0
    for value, digits, sep in parts:
        x = value.astype(np.int64, copy=True)
        for k in range(pos + digits - 1, pos - 1, -1):
            buf[:, k] = x % 10 + 48
            x //= 10
        pos += digits
        if sep:
            buf[:, pos] = ord(sep)
            pos += 1


def _timestamps(seconds: IntArray, valid: BoolArray | None = None) -> pa.Array:
    """Return an Arrow ``timestamp[us]`` array from seconds, null where ``valid`` is False."""
    mask = None if valid is None else ~valid
    return pa.array(seconds.astype(np.int64) * 1_000_000, type=pa.timestamp("us"), mask=mask)


def _labels(values: tuple[str, ...], codes: AnyArray) -> pa.Array:
    """Return ``values[codes]`` as an Arrow string array via ``take``."""
    return pa.array(values, type=pa.string()).take(pa.array(codes.astype(np.int32)))


# --------------------------------------------------------------------------------------------
# population


@dataclass
class _Population:
    """Per-customer latent traits, ordered by signup time (index i has id number i + 1)."""

    segment: IntArray
    signup: IntArray
    region: IntArray
    acquisition: IntArray
    key_account: BoolArray
    base_rate: FloatArray
    decline: FloatArray
    decline_onset: IntArray
    log_price: FloatArray
    extra_lines: FloatArray
    return_prob: FloatArray
    login_rate: FloatArray
    email_rate: FloatArray
    ticket_rate: FloatArray
    complaint_rate: FloatArray
    sub_planned: IntArray
    first_plan: IntArray

    @property
    def n(self) -> int:
        return int(self.segment.size)


def _segment_array(attr: str) -> FloatArray:
    return np.array([getattr(s, attr) for s in SEGMENTS], dtype=np.float64)


def _make_population(spec: SampleSpec, rng: np.random.Generator) -> _Population:
    n = spec.customers
    first = _seconds(spec.start - timedelta(days=365))
    last = _seconds(spec.end - timedelta(days=30))
    u = rng.random(n)
    x = np.log1p(u * np.expm1(_GROWTH)) / _GROWTH  # density grows like exp(_GROWTH * x)
    signup = np.sort(first + (x * (last - first)).astype(np.int64))

    shares = _segment_array("share")
    segment = rng.choice(len(SEGMENTS), size=n, p=shares / shares.sum()).astype(np.int64)
    region = _categorical(rng, np.zeros(n, np.int64), np.array([REGION_WEIGHTS]))
    acq_weights = np.array(
        [
            [0.30, 0.20, 0.10, 0.30, 0.10],
            [0.35, 0.25, 0.15, 0.15, 0.10],
            [0.20, 0.30, 0.35, 0.10, 0.05],
            [0.40, 0.25, 0.10, 0.10, 0.15],
            [0.15, 0.35, 0.40, 0.05, 0.05],
        ]
    )
    acquisition = _categorical(rng, segment, acq_weights)
    key_account = rng.random(n) < _segment_array("key_account_prob")[segment]

    base_rate = _segment_array("rate_median")[segment] * np.exp(
        _segment_array("rate_sigma")[segment] * rng.standard_normal(n)
    )
    declines = rng.random(n) < _segment_array("decline_prob")[segment]
    decline = np.where(declines, rng.uniform(*_DECLINE_RANGE, size=n), 0.0)
    decline = np.round(decline, 4).astype(np.float64)
    decline_onset = signup + (rng.random(n) * _DECLINE_ONSET_MONTHS * AVG_MONTH).astype(np.int64)
    log_price = np.log(_segment_array("price_median")[segment]) + 0.12 * rng.standard_normal(n)

    login_rate = _segment_array("login_rate")[segment] * np.exp(0.4 * rng.standard_normal(n))
    email_rate = _EMAIL_RATE * np.exp(0.5 * rng.standard_normal(n))
    friction = rng.random(n) < _FRICTION_SHARE
    ticket_rate = np.where(friction, _TICKET_RATE[1], _TICKET_RATE[0])
    complaint_rate = np.where(friction, _COMPLAINT_RATE[1], _COMPLAINT_RATE[0])

    subscribes = rng.random(n) < _segment_array("subscribe_prob")[segment]
    delay = rng.exponential(45.0 * DAY, size=n).astype(np.int64)
    sub_planned = np.where(subscribes, signup + delay, np.iinfo(np.int64).max // 4)
    plan_w = np.array([s.plan_weights for s in SEGMENTS])
    first_plan = _categorical(rng, segment, plan_w)
    return _Population(
        segment=segment,
        signup=signup,
        region=region,
        acquisition=acquisition,
        key_account=key_account,
        base_rate=np.round(base_rate, 4),
        decline=decline,
        decline_onset=decline_onset,
        log_price=log_price,
        extra_lines=_segment_array("extra_lines")[segment],
        return_prob=_segment_array("return_prob")[segment],
        login_rate=login_rate,
        email_rate=email_rate,
        ticket_rate=ticket_rate,
        complaint_rate=complaint_rate,
        sub_planned=sub_planned,
        first_plan=first_plan,
    )


# --------------------------------------------------------------------------------------------
# monthly simulation


@dataclass
class _Simulation:
    churn: IntArray  # churn time in seconds, -1 if not churned before end
    order_customer: AnyArray  # orders sorted by time (customer index as int32)
    order_time: IntArray
    event_customer: AnyArray  # events sorted by time (customer index as int32)
    event_time: IntArray
    event_type: AnyArray  # int8 index into EVENT_TYPES
    event_value: FloatArray
    sub_customer: IntArray
    sub_start: IntArray
    sub_end: IntArray  # -1 while active
    sub_plan: IntArray


def _month_bounds(spec: SampleSpec) -> tuple[IntArray, IntArray]:
    """Return calendar-month boundaries (seconds) from a year before start to end, and months."""
    first = np.datetime64(spec.start - timedelta(days=365), "M")
    last = np.datetime64(spec.end - timedelta(days=1), "M")
    months = np.arange(first, last + np.timedelta64(1, "M"))
    edges = np.append(months, last + np.timedelta64(1, "M")).astype("datetime64[s]")
    bounds = edges.astype(np.int64)
    bounds[-1] = min(int(bounds[-1]), _seconds(spec.end))
    month_of_year = months.astype(np.int64) % 12 + 1
    return bounds, month_of_year


# Purchase seasonality by calendar month: December peak, summer dip.
_SEASONALITY = np.array([0.0, 0.92, 0.90, 1.0, 1.0, 1.0, 0.88, 0.80, 0.84, 1.0, 1.02, 1.15, 1.5])


def _scatter(
    rng: np.random.Generator, who: IntArray, counts: IntArray, lo: IntArray, dur: IntArray
) -> tuple[IntArray, IntArray]:
    """Return (customer, time) for ``counts[i]`` uniform times in ``[lo[i], lo[i] + dur[i])``."""
    customer = np.repeat(who, counts)
    start = np.repeat(lo, counts)
    length = np.repeat(dur, counts)
    time = start + (rng.random(customer.size) * length).astype(np.int64)
    return customer, time


def _simulate(spec: SampleSpec, pop: _Population, rng: np.random.Generator) -> _Simulation:
    n = pop.n
    start_s = _seconds(spec.start)
    bounds, month_of_year = _month_bounds(spec)
    plan_term = np.array(HAZARD.plan, dtype=np.float64)

    churn = np.full(n, -1, dtype=np.int64)
    complaints = np.zeros((3, n), dtype=np.int16)  # rolling window of the last three months
    cur_row = np.full(n, -1, dtype=np.int64)
    cur_plan = np.full(n, -1, dtype=np.int64)
    cur_start = np.zeros(n, dtype=np.int64)
    sub_done = np.zeros(n, dtype=bool)
    rows_customer: list[IntArray] = []
    rows_start: list[IntArray] = []
    rows_plan: list[IntArray] = []
    ends_row: list[IntArray] = []
    ends_day: list[IntArray] = []
    next_row = 0
    orders_c: list[IntArray] = []
    orders_t: list[IntArray] = []
    ev_c: list[IntArray] = []
    ev_t: list[IntArray] = []
    ev_k: list[IntArray] = []

    def open_rows(who: IntArray, day: IntArray, plan: IntArray) -> None:
        nonlocal next_row
        rows_customer.append(who)
        rows_start.append(day)
        rows_plan.append(plan)
        cur_row[who] = np.arange(next_row, next_row + who.size)
        cur_plan[who] = plan
        cur_start[who] = day
        next_row += who.size

    def close_rows(who: IntArray, day: IntArray) -> None:
        ends_row.append(cur_row[who].copy())
        ends_day.append(day)
        cur_row[who] = -1
        cur_plan[who] = -1

    for m in range(month_of_year.size):
        ms, me = int(bounds[m]), int(bounds[m + 1])
        slot = m % 3
        alive = np.flatnonzero((pop.signup < me) & (churn < 0))
        recent = complaints[:, alive].sum(axis=0)
        complaints[slot] = 0
        if alive.size == 0:
            continue
        lo = np.maximum(pop.signup[alive], ms)
        hi = np.full(alive.size, me, dtype=np.int64)
        months_declining = np.clip((ms - pop.decline_onset[alive]) / AVG_MONTH, 0.0, None)
        factor = np.exp(-pop.decline[alive] * months_declining)
        rate = pop.base_rate[alive] * factor
        in_history = me > start_s

        # churn hazard, from the state at the start of the month
        churned_now = np.zeros(alive.size, dtype=bool)
        if in_history:
            exposed_from = np.maximum(lo, start_s)
            exposure = np.clip((hi - exposed_from) / AVG_MONTH, 0.0, None)
            logit = (
                HAZARD.intercept
                + HAZARD.decline * (1.0 - factor)
                + HAZARD.complaint * np.minimum(recent, 3)
                + plan_term[cur_plan[alive] + 1]
                + HAZARD.low_frequency * np.clip(-np.log(rate), 0.0, 3.0)
            )
            p = 1.0 - (1.0 - _sigmoid(logit)) ** exposure
            churned_now = rng.random(alive.size) < p
            at = exposed_from[churned_now] + (
                rng.random(int(churned_now.sum())) * (hi[churned_now] - exposed_from[churned_now])
            ).astype(np.int64)
            churn[alive[churned_now]] = at
            hi[churned_now] = at
        last_day = np.where(churned_now, _day_floor(hi), np.iinfo(np.int64).max)

        # subscriptions: changes and cancellations, new subscriptions, ends at churn
        had = cur_row[alive] >= 0
        u = rng.random(alive.size)
        acts = had & (u < _PLAN_CHANGE_PROB + _PLAN_CANCEL_PROB)
        when = _day_floor(ms + (rng.random(alive.size) * (hi - ms)).astype(np.int64))
        acts &= (when > cur_start[alive]) & (when < last_day)
        change = acts & (u < _PLAN_CHANGE_PROB)
        cancel = acts & ~change
        if change.any():
            who = alive[change]
            old = cur_plan[who]
            up = np.where(old == 0, True, np.where(old == 2, False, rng.random(who.size) < 0.6))
            close_rows(who, when[change])
            open_rows(who, when[change], old + np.where(up, 1, -1))
        if cancel.any():
            close_rows(alive[cancel], when[cancel])
            sub_done[alive[cancel]] = True
        planned = pop.sub_planned[alive]
        begins = (~had) & (cur_row[alive] < 0) & ~sub_done[alive]
        begins &= (planned >= ms) & (planned < hi) & (_day_floor(planned) < last_day)
        if begins.any():
            who = alive[begins]
            open_rows(who, _day_floor(planned[begins]), pop.first_plan[who])
        ending = churned_now & (cur_row[alive] >= 0)
        if ending.any():
            close_rows(alive[ending], last_day[ending])

        # activity inside [active_lo, hi)
        active_lo = np.maximum(lo, start_s) if in_history else lo
        dur = np.maximum(hi - active_lo, 0)
        frac = dur / RATE_PERIOD
        n_complaints = rng.poisson(pop.complaint_rate[alive] * frac)
        complaints[slot, alive] = n_complaints
        if not in_history:
            continue
        n_orders = rng.poisson(rate * _SEASONALITY[month_of_year[m]] * frac)
        c, t = _scatter(rng, alive, n_orders, active_lo, dur)
        order = np.argsort(t, kind="stable")
        orders_c.append(c[order].astype(np.int32))
        orders_t.append(t[order])

        engagement = np.sqrt(factor)
        counts = (
            rng.poisson(pop.login_rate[alive] * engagement * frac),
            rng.poisson(pop.email_rate[alive] * engagement * frac),
            rng.poisson(pop.ticket_rate[alive] * frac),
            n_complaints,
        )
        month_c: list[IntArray] = []
        month_t: list[IntArray] = []
        month_k: list[IntArray] = []
        for kind, count in enumerate(counts):
            c, t = _scatter(rng, alive, count, active_lo, dur)
            month_c.append(c)
            month_t.append(t)
            month_k.append(np.full(c.size, kind, dtype=np.int8))
        mc, mt, mk = np.concatenate(month_c), np.concatenate(month_t), np.concatenate(month_k)
        order = np.argsort(mt, kind="stable")
        ev_c.append(mc[order].astype(np.int32))
        ev_t.append(mt[order])
        ev_k.append(mk[order])

    event_type = np.concatenate(ev_k) if ev_k else np.zeros(0, np.int8)
    event_value = np.ones(event_type.size, dtype=np.float64)
    logins = np.flatnonzero(event_type == 0)
    minutes = np.exp(np.log(6.0) + 0.8 * rng.standard_normal(logins.size))
    event_value[logins] = np.round(np.clip(minutes, 0.1, 240.0), 1)

    sub_end = np.full(next_row, -1, dtype=np.int64)
    if ends_row:
        sub_end[np.concatenate(ends_row)] = np.concatenate(ends_day)
    sub_customer = np.concatenate(rows_customer) if rows_customer else np.zeros(0, np.int64)
    sub_start = np.concatenate(rows_start) if rows_start else np.zeros(0, np.int64)
    sub_plan = np.concatenate(rows_plan) if rows_plan else np.zeros(0, np.int64)
    order = np.lexsort((sub_start, sub_customer))
    empty = np.zeros(0, np.int64)
    return _Simulation(
        churn=churn,
        order_customer=np.concatenate(orders_c) if orders_c else empty.astype(np.int32),
        order_time=np.concatenate(orders_t) if orders_t else empty,
        event_customer=np.concatenate(ev_c) if ev_c else empty.astype(np.int32),
        event_time=np.concatenate(ev_t) if ev_t else empty,
        event_type=event_type,
        event_value=event_value,
        sub_customer=sub_customer[order],
        sub_start=sub_start[order],
        sub_end=sub_end[order],
        sub_plan=sub_plan[order],
    )


# --------------------------------------------------------------------------------------------
# order lines and returns

_Columns = dict[str, AnyArray]


def _take(cols: _Columns, index: AnyArray) -> _Columns:
    return {name: values[index] for name, values in cols.items()}


def _concat(first: _Columns, second: _Columns) -> _Columns:
    return {name: np.concatenate([first[name], second[name]]) for name in first}


def _size(cols: _Columns) -> int:
    return int(next(iter(cols.values())).size)


def _insert_rows(main: _Columns, extra: _Columns, slots: AnyArray) -> _Columns:
    """Return ``main`` with ``extra`` row ``j`` inserted before main row ``slots[j]``.

    ``slots`` must be sorted. ``main`` is consumed: its columns are released one at a time so
    that only one column is ever held twice.
    """
    out: _Columns = {}
    for name in list(main):
        column = main.pop(name)
        out[name] = np.insert(column, slots, extra[name].astype(column.dtype, copy=False))
        del column
    return out


def _add_rows(rng: np.random.Generator, clean: _Columns, pieces: list[_Columns]) -> _Columns:
    """Shuffle the pieces together and insert them at random positions; consumes ``clean``."""
    pieces = [p for p in pieces if _size(p) > 0]
    if not pieces:
        return clean
    extra = pieces[0]
    for piece in pieces[1:]:
        extra = _concat(extra, piece)
    n_extra = _size(extra)
    extra = _take(extra, rng.permutation(n_extra))
    slots = np.sort(rng.integers(0, _size(clean) + 1, size=n_extra))
    return _insert_rows(clean, extra, slots)


def _product_offsets() -> IntArray:
    return np.concatenate([[0], np.cumsum(_PRODUCTS_PER_CATEGORY)[:-1]]).astype(np.int64)


def _make_lines(
    spec: SampleSpec, pop: _Population, sim: _Simulation, rng: np.random.Generator
) -> _Columns:
    """Expand orders into order lines, add returns, and return all rows sorted by time.

    Columns: customer (index; -1 is null, ``>= customers`` unknown), time (s), amount, quantity,
    product (index), category (index; codes ``>= len(CATEGORIES)`` are badly spelled), channel,
    is_return, order_number (1-based; "O" numbering for sales, "R" numbering for returns),
    time_format (0 ISO, 1 day-first, ``2 + i`` the malformed literal ``i``; CSV only).
    """
    n_orders = sim.order_customer.size
    index_type = np.int32 if n_orders < 2**31 - 1 else np.int64
    n_lines = 1 + rng.poisson(pop.extra_lines[sim.order_customer])
    line_order = np.repeat(np.arange(n_orders, dtype=index_type), n_lines)
    del n_lines
    customer = sim.order_customer[line_order]
    time = sim.order_time[line_order]

    cat_w = np.array([s.category_weights for s in SEGMENTS])
    category = _categorical(rng, pop.segment[customer], cat_w, np.int8)
    chan_w = np.array([s.channel_weights for s in SEGMENTS])
    channel = _categorical(rng, pop.segment[sim.order_customer], chan_w, np.int8)[line_order]

    size = _PRODUCTS_PER_CATEGORY[category]
    within = (rng.random(customer.size) ** 2 * size).astype(np.int64)  # popular products first
    within = _distinct_products(line_order, within, size)
    product = (_product_offsets()[category] + within).astype(np.int32)
    del within, size

    quantity = (1 + rng.poisson(_CATEGORY_EXTRA_UNITS[category])).astype(np.int32)
    log_unit: FloatArray = pop.log_price[customer] + _CATEGORY_PRICE_OFFSET[category]
    log_unit += 0.40 * rng.standard_normal(customer.size)
    unit = np.maximum(np.round(np.exp(log_unit), 2), 0.5)
    del log_unit
    amount = np.round(unit * quantity, 2)

    # returns: a later row for part or all of a line, before churn and before end
    p_return = pop.return_prob[customer] * _CATEGORY_RETURN_MULT[category]
    returned = np.flatnonzero(rng.random(customer.size) < p_return)
    del p_return
    r_time = time[returned] + 3600 + rng.exponential(12.0 * DAY, returned.size).astype(np.int64)
    limit = np.where(sim.churn >= 0, sim.churn, _seconds(spec.end))[customer[returned]]
    keep = r_time < limit
    returned, r_time = returned[keep], r_time[keep]
    r_full = quantity[returned]
    whole = rng.random(returned.size) < 0.7
    part = 1 + (rng.random(returned.size) * r_full).astype(np.int32)
    r_qty = np.minimum(np.where(whole, r_full, part), r_full)
    r_amount = np.where(r_qty == r_full, amount[returned], unit[returned] * r_qty)
    del unit
    r_sort = np.argsort(r_time, kind="stable")
    returned, r_time = returned[r_sort], r_time[r_sort]
    r_qty, r_amount = r_qty[r_sort], -np.round(r_amount[r_sort], 2)

    returns: _Columns = {
        "customer": customer[returned],
        "time": r_time,
        "amount": r_amount,
        "quantity": r_qty,
        "product": product[returned],
        "category": category[returned],
        "channel": channel[returned],
        "is_return": np.ones(returned.size, dtype=bool),
        "order_number": np.arange(1, returned.size + 1, dtype=index_type),
        "time_format": np.zeros(returned.size, dtype=np.int8),
    }
    slots = np.searchsorted(time, r_time, side="right")
    np.add(line_order, 1, out=line_order)  # 1-based order numbers, in place
    sales: _Columns = {
        "customer": customer,
        "time": time,
        "amount": amount,
        "quantity": quantity,
        "product": product,
        "category": category,
        "channel": channel,
        "is_return": np.zeros(customer.size, dtype=bool),
        "order_number": line_order,
        "time_format": np.zeros(customer.size, dtype=np.int8),
    }
    del customer, time, amount, quantity, product, category, channel, line_order
    return _insert_rows(sales, returns, slots)


def _distinct_products(line_order: AnyArray, within: IntArray, size: IntArray) -> IntArray:
    """Bump products so no order has the same product twice (an order's lines are adjacent)."""
    if line_order.size == 0:
        return within
    longest = int(np.bincount(line_order).max())
    for _ in range(100):
        clash = np.zeros(within.size, dtype=bool)
        for gap in range(1, longest):
            clash[gap:] |= (line_order[gap:] == line_order[:-gap]) & (within[gap:] == within[:-gap])
        if not clash.any():
            return within
        within[clash] = (within[clash] + 1) % size[clash]
    raise RuntimeError("could not make products distinct within orders")


# --------------------------------------------------------------------------------------------
# dirty rows


def _future_times(spec: SampleSpec, rng: np.random.Generator, k: int) -> IntArray:
    """Return ``k`` times in a year well after ``spec.end`` (2030 for the default spec)."""
    year = max(_FUTURE_YEAR, spec.end.year + 2)
    return _seconds(date(year, 1, 1)) + rng.integers(0, 364 * DAY, size=k)


def _dirty_transactions(
    spec: SampleSpec, n_customers: int, lines: _Columns, rng: np.random.Generator
) -> tuple[_Columns, dict[str, int]]:
    """Add dirty rows at random positions and dirty a few rows in place; return counts per kind.

    Added rows are copies of random clean rows with one defect each; except for exact and
    repeated duplicates they get a fresh order id. ``lines`` is consumed.
    """
    weights = dict(_TRANSACTION_DIRTY_WEIGHTS)
    if spec.file_format == "csv":
        weights.update(_CSV_EXTRA_DIRTY_WEIGHTS)
    n_clean = _size(lines)
    counts = _split_counts(round(spec.dirty_fraction * n_clean), weights)
    if sum(counts.values()) == 0:
        return lines, counts

    next_number = {
        False: int(lines["order_number"][~lines["is_return"]].max(initial=0)) + 1,
        True: int(lines["order_number"][lines["is_return"]].max(initial=0)) + 1,
    }
    pieces: list[_Columns] = []
    for kind in sorted(counts):
        k = counts[kind]
        if kind in _IN_PLACE_KINDS or k == 0:
            continue
        src = _take(lines, rng.integers(0, n_clean, size=k))
        if kind not in ("duplicate_row", "repeated_order_line"):
            numbers = src["order_number"].copy()  # a new order: fresh "O" or "R" numbers
            for is_return in (False, True):
                mine = np.flatnonzero(src["is_return"] == is_return)
                numbers[mine] = next_number[is_return] + np.arange(mine.size)
                next_number[is_return] += mine.size
            src["order_number"] = numbers
        if kind == "repeated_order_line":
            later = src["time"] + rng.integers(1, 3600, size=k)  # the same line sent again
            src["time"] = np.minimum(later, _seconds(spec.end) - 1)
        elif kind == "amount_nan":
            src["amount"] = np.full(k, np.nan)
        elif kind == "amount_absurd":
            src["amount"] = np.full(k, 1e9)
        elif kind == "amount_zero":
            src["amount"] = np.zeros(k)
        elif kind == "null_customer_id":
            src["customer"] = np.full(k, -1, dtype=np.int64)
        elif kind == "unknown_customer_id":
            src["customer"] = n_customers + rng.integers(0, n_customers, size=k)
        elif kind == "future_timestamp":
            src["time"] = _future_times(spec, rng, k)
        elif kind == "sentinel_date":
            src["time"] = np.full(k, _seconds(_SENTINEL), dtype=np.int64)
        elif kind == "malformed_date_string":
            src["time_format"] = 2 + rng.integers(0, len(_MALFORMED_DATES), size=k)
        pieces.append(src)

    # in place, after the added rows were copied so that each kind is counted exactly once
    n_cat = len(CATEGORIES)
    rows = rng.choice(n_clean, size=counts["padded_category"], replace=False)
    lines["category"][rows] += n_cat * (1 + rng.integers(0, 2, size=rows.size))
    if "mixed_date_format" in counts:
        rows = rng.choice(n_clean, size=counts["mixed_date_format"], replace=False)
        lines["time_format"][rows] = 1
    merged = _add_rows(rng, lines, pieces)
    return merged, counts


def _dirty_events(
    spec: SampleSpec, n_customers: int, events: _Columns, rng: np.random.Generator
) -> tuple[_Columns, dict[str, int]]:
    n_clean = _size(events)
    dose = round(spec.dirty_fraction * _EVENT_DIRTY_SHARE * n_clean)
    counts = _split_counts(dose, _EVENT_DIRTY_WEIGHTS)
    pieces: list[_Columns] = []
    for kind in sorted(counts):
        k = counts[kind]
        if k == 0:
            continue
        src = _take(events, rng.integers(0, n_clean, size=k))
        if kind == "null_customer_id":
            src["customer"] = np.full(k, -1, dtype=np.int64)
        elif kind == "unknown_customer_id":
            src["customer"] = n_customers + rng.integers(0, n_customers, size=k)
        elif kind == "future_timestamp":
            src["time"] = _future_times(spec, rng, k)
        pieces.append(src)
    merged = _add_rows(rng, events, pieces)
    return merged, counts


def _dirty_customers(
    spec: SampleSpec, customers: _Columns, rng: np.random.Generator
) -> tuple[_Columns, dict[str, int]]:
    n_clean = _size(customers)
    dose = round(spec.dirty_fraction * _CUSTOMER_DIRTY_SHARE * n_clean)
    counts = _split_counts(dose, _CUSTOMER_DIRTY_WEIGHTS)
    if dose == 0:
        return customers, counts
    n_regions = len(REGIONS)
    region = customers["region"]
    rows = rng.choice(n_clean, size=counts["padded_region"], replace=False)
    region[rows] += n_regions * (1 + rng.integers(0, 2, size=rows.size))
    customers["region"] = region
    k = counts["duplicate_customer_row"]
    dup = _take(customers, rng.choice(n_clean, size=k, replace=False))
    shift = rng.integers(1, n_regions, size=k)  # same id, a different region
    dup["region"] = (dup["region"] % n_regions + shift) % n_regions
    merged = _add_rows(rng, customers, [dup])
    return merged, counts


# --------------------------------------------------------------------------------------------
# tables


def _customer_ids(spec: SampleSpec, index: IntArray) -> pa.Array:
    """Return customer ids for indices (``-1`` gives null; ``>= customers`` gives unknown ids)."""
    digits = max(7, len(str(2 * spec.customers)))
    unique = _fixed_width_strings("C", np.arange(1, 2 * spec.customers + 1), digits)
    return unique.take(pa.array(index, mask=index < 0, type=pa.int64()))


def _order_ids(lines: _Columns) -> pa.Array:
    numbers, is_return = lines["order_number"], lines["is_return"]
    n_sales = int(numbers[~is_return].max(initial=0))
    n_returns = int(numbers[is_return].max(initial=0))
    digits = max(10, len(str(max(n_sales, n_returns))))
    unique = pa.concat_arrays(
        [
            _fixed_width_strings("O", np.arange(1, n_sales + 1), digits),
            _fixed_width_strings("R", np.arange(1, n_returns + 1), digits),
        ]
    )
    return unique.take(pa.array(np.where(is_return, n_sales, 0) + numbers - 1))


def _transaction_timestamps(spec: SampleSpec, lines: _Columns) -> pa.Array:
    time, time_format = lines["time"], lines["time_format"]
    if spec.file_format != "csv":
        return _timestamps(time)
    text = _format_timestamps(time)
    day_first = time_format == 1
    if day_first.any():
        replacement = _format_timestamps(time[day_first], day_first=True)
        text = pc.replace_with_mask(text, pa.array(day_first), replacement)
    malformed = time_format >= 2
    if malformed.any():
        literals = pa.array(_MALFORMED_DATES, type=pa.string())
        replacement = literals.take(pa.array(time_format[malformed] - 2))
        text = pc.replace_with_mask(text, pa.array(malformed), replacement)
    return text


def _transactions_table(spec: SampleSpec, lines: _Columns) -> pa.Table:
    """Build the transactions table; consumes ``lines`` column by column to bound memory."""
    spellings = (
        CATEGORIES
        + tuple(f" {c.title()} " for c in CATEGORIES)
        + tuple(f"{c.upper()}  " for c in CATEGORIES)
    )
    columns: dict[str, pa.Array] = {}
    columns["order_id"] = _order_ids(lines)
    del lines["order_number"]
    columns["customer_id"] = _customer_ids(spec, lines.pop("customer"))
    columns["timestamp"] = _transaction_timestamps(spec, lines)
    del lines["time"], lines["time_format"]
    columns["amount"] = pa.array(lines.pop("amount"), type=pa.float64())
    columns["quantity"] = pa.array(lines.pop("quantity").astype(np.int64), type=pa.int64())
    columns["product"] = _fixed_width_strings("P", lines.pop("product") + 1, 4)
    columns["category"] = _labels(spellings, lines.pop("category"))
    columns["channel"] = _labels(CHANNELS, lines.pop("channel"))
    columns["is_return"] = pa.array(lines.pop("is_return"), type=pa.bool_())
    return pa.table(columns)


def _events_table(spec: SampleSpec, events: _Columns) -> pa.Table:
    return pa.table(
        {
            "customer_id": _customer_ids(spec, events["customer"]),
            "timestamp": _timestamps(events["time"]),
            "event_type": _labels(EVENT_TYPES, events["type"]),
            "value": pa.array(events["value"], type=pa.float64()),
        }
    )


def _customers_table(spec: SampleSpec, customers: _Columns) -> pa.Table:
    spellings = (
        REGIONS + tuple(f" {r.title()}" for r in REGIONS) + tuple(f"{r.upper()} " for r in REGIONS)
    )
    n = _size(customers)
    return pa.table(
        {
            "customer_id": _customer_ids(spec, customers["customer"]),
            "signup_date": _timestamps(customers["signup"]),
            "region": _labels(spellings, customers["region"]),
            "industry": _labels(INDUSTRIES, customers["industry"]),
            "acquisition_channel": _labels(ACQUISITION_CHANNELS, customers["acquisition"]),
            "is_key_account": pa.array(customers["key_account"], type=pa.bool_()),
            "churn_date": pa.nulls(n, type=pa.timestamp("us")),
        }
    )


def _subscriptions_table(spec: SampleSpec, sim: _Simulation) -> pa.Table:
    prices = np.array(PLAN_PRICES, dtype=np.float64)
    return pa.table(
        {
            "customer_id": _customer_ids(spec, sim.sub_customer),
            "start_date": _timestamps(sim.sub_start),
            "end_date": _timestamps(sim.sub_end, valid=sim.sub_end >= 0),
            "plan": _labels(PLANS, sim.sub_plan),
            "recurring_revenue": pa.array(prices[sim.sub_plan], type=pa.float64()),
        }
    )


def _owner_ids(count: int) -> list[str]:
    return [f"OWN-{i:03d}" for i in range(1, count + 1)]


def _owners_table(spec: SampleSpec, rng: np.random.Generator) -> pa.Table:
    """Return the account owners: regions and industries they cover, seniority, capacity.

    The last owner has left (``active`` false) but still holds customers in the CRM, so the
    default run shows forced moves.
    """
    count = max(3, spec.customers // CUSTOMERS_PER_OWNER)
    regions = [
        ";".join(sorted(rng.choice(REGIONS, size=rng.integers(1, 3), replace=False)))
        for _ in range(count)
    ]
    industries = [
        ";".join(sorted(rng.choice(INDUSTRIES, size=rng.integers(2, 4), replace=False)))
        for _ in range(count)
    ]
    # Room for everyone with ~20% to spare, the owner who left not counted.
    capacity = np.ceil(1.2 * spec.customers / (count - 1) * rng.uniform(0.85, 1.15, size=count))
    names = [
        f"{_OWNER_NAMES[i % len(_OWNER_NAMES)]} {_OWNER_SURNAMES[i % len(_OWNER_SURNAMES)]}"
        for i in range(count)
    ]
    active = np.ones(count, dtype=bool)
    active[-1] = False
    return pa.table(
        {
            "owner_id": _owner_ids(count),
            "name": names,
            "regions": regions,
            "industries": industries,
            "seniority": pa.array(rng.choice([1, 2, 3], size=count, p=[0.5, 0.3, 0.2])),
            "capacity": pa.array(capacity.astype(np.int64)),
            "active": pa.array(active),
        }
    )


def _assignments_table(
    spec: SampleSpec, pop: _Population, owners: pa.Table, rng: np.random.Generator
) -> pa.Table:
    """Return the CRM's current owners: most in the customer's region, some anywhere, some none.

    About 8% of customers are new (no owner yet); 10% sit with an owner outside their region.
    """
    ids = owners.column("owner_id").to_pylist()
    covers = [set(r.split(";")) for r in owners.column("regions").to_pylist()]
    by_region = [
        [i for i, c in enumerate(covers) if r in c] or list(range(len(ids))) for r in REGIONS
    ]
    choice = np.array([by_region[r][rng.integers(len(by_region[r]))] for r in pop.region])
    stray = rng.random(pop.n) < 0.10
    choice[stray] = rng.integers(0, len(ids), size=int(stray.sum()))
    assigned = np.flatnonzero(rng.random(pop.n) >= 0.08)
    since = pop.signup[assigned] + (30 * DAY)
    return pa.table(
        {
            "customer_id": _customer_ids(spec, assigned),
            "owner_id": pa.array(np.array(ids, dtype=object)[choice[assigned]], type=pa.string()),
            "since": _timestamps(since),
        }
    )


def _ground_truth_table(spec: SampleSpec, pop: _Population, sim: _Simulation) -> pa.Table:
    names = tuple(s.name for s in SEGMENTS)
    return pa.table(
        {
            "customer_id": _customer_ids(spec, np.arange(pop.n, dtype=np.int64)),
            "latent_segment": pa.array(pop.segment, type=pa.int64()),
            "latent_segment_name": _labels(names, pop.segment),
            "churn_time": _timestamps(sim.churn, valid=sim.churn >= 0),
            "base_rate": pa.array(pop.base_rate, type=pa.float64()),
            "decline": pa.array(pop.decline, type=pa.float64()),
        }
    )


def _iter_tables(
    spec: SampleSpec, dirty: dict[str, dict[str, int]]
) -> Iterator[tuple[str, pa.Table]]:
    """Yield ``(name, table)`` in ``TABLES`` order, filling ``dirty`` with counts per kind.

    Tables are built one at a time so that a writer can release each before the next is built.
    """
    # Streams 6-8 were added later; spawning more children leaves the first six unchanged.
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(spec.seed).spawn(9)]
    pop = _make_population(spec, streams[0])
    sim = _simulate(spec, pop, streams[1])

    customers: _Columns = {
        "customer": np.arange(pop.n, dtype=np.int64),
        "signup": pop.signup.copy(),
        "region": pop.region.astype(np.int8),
        "acquisition": pop.acquisition.astype(np.int8),
        "key_account": pop.key_account.copy(),
        "industry": _categorical(
            streams[6], np.zeros(pop.n, np.int64), np.array([INDUSTRY_WEIGHTS])
        ).astype(np.int8),
    }
    customers, dirty["customers"] = _dirty_customers(spec, customers, streams[2])
    yield "customers", _customers_table(spec, customers)
    del customers

    lines = _make_lines(spec, pop, sim, streams[3])
    sim.order_customer = np.empty(0, np.int32)  # release the order arrays
    sim.order_time = np.empty(0, np.int64)
    lines, dirty["transactions"] = _dirty_transactions(spec, pop.n, lines, streams[4])
    table = _transactions_table(spec, lines)
    del lines
    yield "transactions", table
    del table

    events: _Columns = {
        "customer": sim.event_customer,
        "time": sim.event_time,
        "type": sim.event_type,
        "value": sim.event_value,
    }
    sim.event_customer = np.empty(0, np.int32)
    sim.event_time = np.empty(0, np.int64)
    events, dirty["events"] = _dirty_events(spec, pop.n, events, streams[5])
    table = _events_table(spec, events)
    del events
    yield "events", table
    del table

    yield "subscriptions", _subscriptions_table(spec, sim)
    owners = _owners_table(spec, streams[7])
    yield "owners", owners
    yield "assignments", _assignments_table(spec, pop, owners, streams[8])
    yield "ground_truth", _ground_truth_table(spec, pop, sim)


def generate_sample(spec: SampleSpec) -> dict[str, pa.Table]:
    """Generate the sample tables for ``spec``.

    Args:
        spec: Size, seed, history window, dirt dose and file format.

    Returns:
        Tables keyed ``customers``, ``transactions``, ``events``, ``subscriptions`` and
        ``ground_truth``. With ``file_format="csv"`` the transactions ``timestamp`` column is
        text (so malformed and day-first dates can appear); otherwise it is ``timestamp[us]``.

    """
    return dict(_iter_tables(spec, {}))


def _as_csv_ready(table: pa.Table) -> pa.Table:
    """Return ``table`` with timestamp columns as ``YYYY-MM-DD HH:MM:SS`` text."""
    columns = []
    for column in table.columns:
        if pa.types.is_timestamp(column.type):
            values = column.combine_chunks()
            valid = values.is_valid().to_numpy(zero_copy_only=False)
            seconds = values.cast(pa.int64()).fill_null(0).to_numpy() // 1_000_000
            column = pa.chunked_array([_format_timestamps(seconds, valid)])
        columns.append(column)
    return pa.table(columns, names=table.column_names)


def write_sample(spec: SampleSpec, out_dir: Path) -> dict[str, Path]:
    """Generate the sample and write one file per table plus ``manifest.json``.

    Args:
        spec: What to generate; ``spec.file_format`` picks ``.parquet`` or ``.csv`` files.
        out_dir: Folder to write into; created if missing, existing sample files are replaced.

    Returns:
        Table name to file path, with the manifest under ``"manifest"``. The manifest holds the
        spec, row counts per table and counts of each kind of injected dirty row per table.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dirty: dict[str, dict[str, int]] = {}
    paths: dict[str, Path] = {}
    row_counts: dict[str, int] = {}
    for name, table in _iter_tables(spec, dirty):
        row_counts[name] = table.num_rows
        path = out_dir / f"{name}.{spec.file_format}"
        if spec.file_format == "csv":
            ready = _as_csv_ready(table)
            with pacsv.CSVWriter(path, ready.schema) as writer:
                for batch in ready.to_batches(max_chunksize=_CSV_BATCH_ROWS):
                    writer.write_batch(batch)
            del ready
        else:
            pq.write_table(table, path)
        paths[name] = path
        del table
    manifest = {
        "spec": spec.to_dict(),
        "row_counts": row_counts,
        "dirty_rows": dirty,
        "segments": [s.name for s in SEGMENTS],
        "files": {name: path.name for name, path in paths.items()},
    }
    manifest_path = out_dir / "manifest.json"
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    paths["manifest"] = manifest_path
    return paths
