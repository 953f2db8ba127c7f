"""Account allocation: every customer to an owner, as a minimum-cost assignment under capacity.

A customer placed with an owner costs the sum of configurable parts (``AllocationWeights``):
its region not covered by the owner, its industry not covered, its value tier wanting a more
senior owner (per level short), and moving it away from its current owner. Owners hold at most
their capacity. When capacity is short, a customer left without an owner costs more the more
value it has at risk, so the customers that matter most are placed first.

Stability: a customer keeps its owner unless that owner is gone or inactive, a broken rule costs
more than a move (by default region and industry always do; seniority when two levels short), or
the owner's capacity forces a move. At most ``max_moves_share`` of the customers move for a
broken rule in one run; moves forced by an owner leaving or by capacity are always made.

How it is solved: customers with the same region, industry, tier, priority bucket and current
owner are interchangeable, so the problem is a transportation problem over those groups (at a
million customers and 500 owners, some 10^5 groups instead of 5x10^8 customer-owner pairs). A
group's only variable is how many of it leave its owner; leavers and new customers pass through
pools per (profile, bucket) and per profile to classes of owners that cost the same, and on to
the owners, where owners alike that start within capacity share one capacity row (their room is
filled evenly afterwards); the move budget is one extra row. HiGHS (scipy) solves the linear
program by column generation: first with leaving offered only to groups likely to leave and
profiles sent only to their best-matched classes, then, from the basis it ended with, with any
other column its duals price as worth it. Without the budget row the matrix is a network
matrix, so the optimum is integral; the budget row can leave a few fractional flows, which are
rounded down (a group's leavers up, so no owner goes over capacity) and the customers left
without a seat placed by ``_place_leftovers``. Why HiGHS rather than a dedicated min-cost-flow
solver, and why no row per group or per owner: docs/allocation.md (measured).

Pure library code: frames in, frames out, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp
from numpy.typing import NDArray

# HiGHS as scipy ships it (scipy.optimize.linprog's solver). linprog builds a new model per call;
# the model object keeps its basis when columns join, so a pricing round costs a few pivots
# instead of a second solve from scratch (scipy is pinned below the release that may move it).
from scipy.optimize._highspy import _core as highs

# Reason codes, one per customer (docs/allocation.md explains each).
KEPT = "kept"
NEW = "new"
OWNER_INACTIVE = "owner_inactive"
OWNER_REMOVED = "owner_removed"
OVER_CAPACITY = "over_capacity"
REGION_MISMATCH = "region_mismatch"
INDUSTRY_MISMATCH = "industry_mismatch"
SENIORITY_MISMATCH = "seniority_mismatch"
REBALANCED = "rebalanced"
NO_CAPACITY = "no_capacity"
REASONS = (
    KEPT,
    NEW,
    OWNER_INACTIVE,
    OWNER_REMOVED,
    OVER_CAPACITY,
    REGION_MISMATCH,
    INDUSTRY_MISMATCH,
    SENIORITY_MISMATCH,
    REBALANCED,
    NO_CAPACITY,
)
RULES = ("region", "industry", "seniority")
UNKNOWN = "\x00unknown"  # a customer without region or industry: never matched, never a rule
OWNER_COLUMNS = ("owner_id", "regions", "industries", "seniority", "capacity", "active")
CUSTOMER_COLUMNS = ("customer_id", "region", "industry", "value_tier", "value_at_risk")


class AllocationError(ValueError):
    """The owners or customers handed to ``allocate`` cannot be allocated as they are."""


@dataclass(frozen=True)
class AllocationWeights:
    """The parts of the cost of placing one customer with one owner (any unit, same for all).

    Attributes:
        region: The owner does not cover the customer's region.
        industry: The owner does not cover the customer's industry.
        seniority: Per seniority level the owner lacks for the customer's value tier.
        move: Moving the customer away from an active current owner.
        unassigned: Leaving the customer without an owner (times 1 + its priority bucket).
        tier_seniority: Least seniority level each value tier should get.
        priority_buckets: Quantile buckets of value at risk; a higher bucket is placed first.
    """

    region: float = 10.0
    industry: float = 5.0
    seniority: float = 3.0
    move: float = 4.0
    unassigned: float = 1000.0
    tier_seniority: Mapping[str, int] = field(default_factory=lambda: {"A": 3, "B": 2, "C": 1})
    priority_buckets: int = 4

    def __post_init__(self) -> None:
        worst = self.region + self.industry + self.seniority * max(self.tier_seniority.values())
        if self.unassigned <= worst + self.move:
            raise AllocationError(
                f"allocation weight 'unassigned' ({self.unassigned}) must exceed the worst "
                f"placement ({worst + self.move}); otherwise customers are left out while "
                "owners have room"
            )


@dataclass(frozen=True)
class Allocation:
    """What ``allocate`` decided.

    Attributes:
        assignments: One row per customer: customer_id, owner_id (null: no capacity left),
            previous_owner_id, reason, mismatch (the rules its owner breaks, comma-separated,
            null when none) and moved (bool).
        moves_for_rules: Customers moved away from an active owner beyond the ones its capacity
            forced out: the moves the budget counts (at most ``budget``).
        forced_moves: Customers moved because their owner left or went inactive, plus those
            their owner's capacity forced out.
        budget: Moves for broken rules the run was allowed (``max_moves_share``).
        objective: Total cost of the allocation made.
        lower_bound: The linear program's optimum with the run's budget, a bound no
            allocation beats; ``objective`` exceeds it only by what rounding fractional flows
            cost (the few customers ``_place_leftovers`` places, or a re-solve with a tighter
            budget when rounding overshot it).
    """

    assignments: pd.DataFrame
    moves_for_rules: int
    forced_moves: int
    budget: int
    objective: float
    lower_bound: float


def owner_table(owners: pd.DataFrame) -> pd.DataFrame:
    """Return ``owners`` checked and normalised: one row per owner, sets of regions/industries.

    ``regions`` and ``industries`` may be lists or text separated by ``;`` or ``,``; an empty
    value covers nothing. ``seniority`` defaults to 1, ``active`` to true.

    Raises:
        AllocationError: No owners, owner ids repeat or are missing, or a capacity is negative
            or missing.
    """
    if "owner_id" not in owners.columns:
        raise AllocationError("owners: required column 'owner_id' is missing")
    if owners.empty:  # almost surely a broken extract: refuse rather than unassign everyone
        raise AllocationError("owners: the table has 0 rows; allocation needs at least one owner")
    frame = owners.copy()
    ids = frame["owner_id"]
    if ids.isna().any():
        raise AllocationError(f"owners: column 'owner_id' has {int(ids.isna().sum())} empty rows")
    frame["owner_id"] = ids.astype(str)
    repeated = frame["owner_id"].duplicated(keep=False)
    if repeated.any():
        shown = sorted(frame.loc[repeated, "owner_id"].unique())[:5]
        raise AllocationError(
            f"owners: column 'owner_id' repeats in {int(repeated.sum())} rows "
            f"(e.g. {', '.join(shown)}); each owner must appear once"
        )
    if "capacity" not in frame.columns or frame["capacity"].isna().any():
        missing = len(frame) if "capacity" not in frame else int(frame["capacity"].isna().sum())
        raise AllocationError(f"owners: column 'capacity' is missing in {missing} rows")
    capacity = pd.to_numeric(frame["capacity"], errors="coerce")
    if capacity.isna().any() or (capacity < 0).any():
        bad = int((capacity.isna() | (capacity < 0)).sum())
        raise AllocationError(f"owners: column 'capacity' is not a count >= 0 in {bad} rows")
    frame["capacity"] = capacity.astype("int64")
    for column in ("regions", "industries"):
        values = frame[column] if column in frame.columns else pd.Series(None, index=frame.index)
        frame[column] = pd.Series([_as_set(v) for v in values], index=frame.index, dtype=object)
    seniority = frame["seniority"] if "seniority" in frame.columns else 1
    frame["seniority"] = pd.Series(seniority, index=frame.index).fillna(1).astype("int64")
    active = frame["active"] if "active" in frame.columns else True
    frame["active"] = pd.Series(active, index=frame.index).fillna(True).astype(bool)
    return frame.reset_index(drop=True)


def _as_set(value: object) -> frozenset[str]:
    """Return the regions or industries in one cell as a set of lower-case names."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return frozenset()
    if isinstance(value, str):
        parts = value.replace(",", ";").split(";")
    else:
        parts = [str(v) for v in value]  # type: ignore[attr-defined]
    return frozenset(p.strip().lower() for p in parts if p and p.strip())


def _key(values: pd.Series) -> pd.Series:
    """Return region or industry values as lower-case text, ``UNKNOWN`` where missing."""
    text = values.astype("string").str.strip().str.lower()
    return text.fillna(UNKNOWN).replace("", UNKNOWN).astype(object)


def priority_buckets(value_at_risk: pd.Series, buckets: int) -> NDArray[np.int64]:
    """Return each customer's priority bucket (0 lowest) from value-at-risk quantiles.

    Missing and zero values are bucket 0; positive values are cut into ``buckets - 1`` equal
    quantile groups above it.
    """
    values = value_at_risk.to_numpy(dtype="float64", na_value=np.nan)
    out = np.zeros(len(values), dtype=np.int64)
    positive = np.nan_to_num(values, nan=0.0) > 0
    if buckets > 1 and positive.any():
        ranks = pd.Series(values[positive]).rank(pct=True, method="average").to_numpy()
        out[positive] = np.clip(np.ceil(ranks * (buckets - 1)), 1, buckets - 1).astype(np.int64)
    return out


@dataclass(frozen=True)
class _Costs:
    """Rule parts of the cost of each profile with each owner, and what each part is."""

    region: NDArray[np.bool_]  # profiles x owners: region not covered
    industry: NDArray[np.bool_]
    levels_short: NDArray[np.int64]
    total: NDArray[np.float64]


def _profile_costs(
    profiles: pd.DataFrame, owners: pd.DataFrame, weights: AllocationWeights
) -> _Costs:
    """Return the rule costs of every (region, industry, tier) profile with every owner."""
    region = np.array(
        [[r not in cover for cover in owners["regions"]] for r in profiles["region"]], dtype=bool
    ).reshape(len(profiles), len(owners))
    industry = np.array(
        [[i not in cover for cover in owners["industries"]] for i in profiles["industry"]],
        dtype=bool,
    ).reshape(len(profiles), len(owners))
    wanted = profiles["value_tier"].map(lambda t: weights.tier_seniority.get(t, 0))
    levels = np.maximum(
        0,
        wanted.to_numpy(dtype="int64")[:, None] - owners["seniority"].to_numpy(dtype="int64"),
    )
    total = weights.region * region + weights.industry * industry + weights.seniority * levels
    return _Costs(region, industry, levels, total.astype("float64"))


def _with_profiles(
    frame: pd.DataFrame, owners: pd.DataFrame, weights: AllocationWeights
) -> tuple[pd.DataFrame, _Costs]:
    """Return the customers numbered by (region, industry, tier) profile, and its costs."""
    keys = ["region", "industry", "value_tier"]
    frame = frame.assign(profile=frame.groupby(keys, sort=True).ngroup())
    profiles = frame.drop_duplicates("profile").sort_values("profile")[keys]
    return frame, _profile_costs(profiles.reset_index(drop=True), owners, weights)


def allocate(
    customers: pd.DataFrame,
    owners: pd.DataFrame,
    current: pd.Series | None = None,
    weights: AllocationWeights | None = None,
    max_moves_share: float = 0.05,
) -> Allocation:
    """Return every customer's owner: the least total cost within capacity and the move budget.

    Args:
        customers: customer_id, region, industry, value_tier, value_at_risk (missing regions,
            industries and tiers are allowed: they match nothing and want no seniority).
        owners: owner_id, regions, industries, seniority, capacity, active (see
            ``owner_table``).
        current: The current owner per customer id (index: customer_id); a missing or null
            entry means the customer has no owner yet.
        weights: The cost parts; default ``AllocationWeights()``.
        max_moves_share: Largest share of the customers moved away from an active owner for a
            broken rule (moves forced by an owner leaving or by capacity are not counted).

    Raises:
        AllocationError: Bad owners (see ``owner_table``), repeated customer ids, or a share
            outside [0, 1].
    """
    weights = weights or AllocationWeights()
    if not 0.0 <= max_moves_share <= 1.0:
        raise AllocationError(f"max_moves_share must be within [0, 1], got {max_moves_share}")
    owners = owner_table(owners)
    frame = _customer_frame(customers, owners, current, weights)

    # Interchangeable customers: same profile, priority and current (still valid) owner, where
    # alike owners with room count as one (``_OwnerUnits``).
    frame, costs = _with_profiles(frame, owners, weights)
    stay = frame["stay_owner"].to_numpy()
    held = np.bincount(stay[stay >= 0], minlength=len(owners))  # by active owners
    units = _OwnerUnits.of(costs.total, owners, held)
    frame["stay_unit"] = np.where(stay >= 0, units.unit[np.maximum(stay, 0)], -1)
    frame["group"] = frame.groupby(["profile", "bucket", "stay_unit"], sort=True).ngroup()
    groups = (
        frame.groupby("group", sort=True)
        .agg(
            n=("customer_id", "size"),
            profile=("profile", "first"),
            bucket=("bucket", "first"),
            stay_unit=("stay_unit", "first"),
        )
        .reset_index(drop=True)
    )
    # Customers active owners hold beyond their capacity: they must move.
    overflow = int(np.maximum(held - owners["capacity"].to_numpy(), 0).sum())
    budget = int(np.floor(max_moves_share * len(frame)))
    # Rounding fractional flows can cost a move or two beyond the budget (a leftover placed
    # away from its full owner): then solve again with the budget row tightened by the excess.
    limit = budget + overflow
    bound = None  # the first program's optimum: a tightened budget only raises it
    for _ in range(3):
        flows = _solve(
            groups, units.costs(costs.total), units.capacity, units.active, weights, limit
        )
        bound = flows.objective if bound is None else bound
        placed = _disaggregate(frame, flows, costs, owners, units)
        excess = _moves_from_active(placed) - overflow - budget
        if excess <= 0 or limit == 0:
            break
        limit = max(limit - excess, 0)
    assignments = _reasons(placed, owners, costs)
    moved = assignments["moved"] & assignments["owner_id"].notna()
    gone = moved & assignments["reason"].isin([OWNER_INACTIVE, OWNER_REMOVED])
    from_active = int(moved.sum() - gone.sum())
    return Allocation(
        assignments=assignments,
        moves_for_rules=max(from_active - overflow, 0),
        forced_moves=int(gone.sum()) + min(overflow, from_active),
        budget=budget,
        objective=_realised_cost(placed, costs, weights),
        lower_bound=float(bound if bound is not None else flows.objective),
    )


def _customer_frame(
    customers: pd.DataFrame,
    owners: pd.DataFrame,
    current: pd.Series | None,
    weights: AllocationWeights,
) -> pd.DataFrame:
    """Return the customers with normalised keys, priority bucket and current owner index."""
    missing = [c for c in ("customer_id",) if c not in customers.columns]
    if missing:
        raise AllocationError(f"customers: required column(s) {missing} missing")
    ids = customers["customer_id"].astype(str)
    if not pd.Index(ids).is_unique:  # a third of the time of ``duplicated`` at 5M ids
        raise AllocationError(
            f"customers: column 'customer_id' repeats in {int(ids.duplicated().sum())} rows"
        )
    n = len(customers)
    frame = pd.DataFrame({"customer_id": ids.array})  # as text, so the output needs no copy
    for column in ("region", "industry"):
        values = customers[column] if column in customers.columns else pd.Series([None] * n)
        frame[column] = _key(values.reset_index(drop=True)).to_numpy()
    tiers = customers["value_tier"] if "value_tier" in customers.columns else None
    frame["value_tier"] = (
        pd.Series(tiers.to_numpy(), dtype=object).fillna("-").to_numpy()
        if tiers is not None
        else "-"
    )
    var = (
        customers["value_at_risk"].reset_index(drop=True)
        if "value_at_risk" in customers.columns
        else pd.Series(np.zeros(n))
    )
    frame["value_at_risk"] = pd.to_numeric(var, errors="coerce").fillna(0.0).to_numpy()
    frame["bucket"] = priority_buckets(frame["value_at_risk"], weights.priority_buckets)
    previous = np.full(n, None, dtype=object)
    prev_index = np.full(n, -1, dtype=np.int64)
    hit = np.zeros(n, dtype=bool)  # has a current owner (an id, whether or not in ``owners``)
    if current is not None:
        current = _by_text_id(current)
        if not current.index.is_unique:
            repeated = current.index[current.index.duplicated()]
            raise AllocationError(
                f"current owners: customer_id repeats in {len(repeated)} rows (e.g. "
                f"{', '.join(map(str, repeated.unique()[:3]))}); each customer has one owner"
            )
        # Arrow hash lookups: pandas' reindex took 11 s of the 5M allocation, these 2 s.
        row = _positions(_arrow_text(ids), _arrow_text(current.index))
        text = _arrow_text(current)  # the owner ids, null where an entry is null
        hit = row >= 0
        hit[hit] = np.asarray(text.is_valid())[row[hit]]
        previous[hit] = current.to_numpy(dtype=object)[row[hit]]
        prev_index[hit] = _positions(text, _arrow_text(owners["owner_id"]))[row[hit]]
    frame["previous_owner_id"] = previous
    frame["has_previous"] = hit
    active = owners["active"].to_numpy()
    valid = prev_index >= 0
    valid[valid] = active[prev_index[valid]]
    frame["previous_index"] = prev_index  # -1: no owner, or one not in the owners table
    frame["stay_owner"] = np.where(valid, prev_index, -1)  # -1 also for an inactive owner
    return frame


def _by_text_id(current: pd.Series) -> pd.Series:
    """Return ``current`` indexed by its customer ids as text (as they usually are already).

    Renaming 5M ids that are text already took 3 s of the 5M allocation.
    """
    return current if current.index.inferred_type == "string" else current.rename(index=str)


def _arrow_text(values: pd.Series | pd.Index) -> pa.Array:
    """Return ``values`` as Arrow large strings, nulls kept (no copy when they are already)."""
    if not isinstance(values.dtype, pd.StringDtype):
        values = values.astype("string")
    array = pa.array(values)
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    return array if array.type == pa.large_string() else array.cast(pa.large_string())


def _positions(keys: pa.Array, among: pa.Array) -> NDArray[np.int64]:
    """Return the position of each key in ``among`` (first match; -1: null or absent)."""
    found = pc.index_in(keys, value_set=among, skip_nulls=True)
    return np.asarray(pc.fill_null(found, -1).to_numpy(), dtype=np.int64)


def _owner_ids(owners: pd.DataFrame, rows: NDArray[np.int64]) -> pd.Series | NDArray[np.object_]:
    """Return the owner id of each owner row number (null for -1: no owner), as a column."""
    return _text_column([*owners["owner_id"], None], np.where(rows >= 0, rows, len(owners)))


def _moved(frame: pd.DataFrame, owner: NDArray[np.int64]) -> NDArray[np.bool_]:
    """Return per customer whether it has a previous owner and ``owner`` (a row) is another.

    Owner ids are unique, so comparing rows is comparing ids; a previous owner not in the
    table (-1) is never the new one.
    """
    prev_index = frame["previous_index"].to_numpy()
    return np.asarray(
        frame["has_previous"].to_numpy() & ((prev_index < 0) | (owner != prev_index)),
        dtype=bool,
    )


@dataclass(frozen=True)
class _Flows:
    """The optimum, per group: stayed, moved to its pool, unassigned; per pool and owner."""

    stay: NDArray[np.int64]
    move: NDArray[np.int64]
    pool_to_owner: NDArray[np.int64]  # profiles x units (``_OwnerUnits``)
    objective: float


@dataclass(frozen=True)
class _OwnerClasses:
    """Active owners grouped by what they cost: owners of one class are interchangeable.

    Two owners whose rule costs are equal for every profile can take each other's customers
    at no cost, so the program sends a profile's customers to a class, and a class of several
    owners hands its arrivals on to them as seats. The sample's 33,333 owners at 5M customers
    fall into 1,575 classes (regions x industries x seniority).

    Attributes:
        costs: Profiles x classes: the rule cost of the class's owners.
        single: Per class, its one owner (-1: the class has several).
        row: Per class of several owners, its row among them (-1: a class of one).
        seat_owner: The owners of classes of several, ordered by class row.
        seat_row: The class row of each of those owners.
    """

    costs: NDArray[np.float64]
    single: NDArray[np.int64]
    row: NDArray[np.int64]
    seat_owner: NDArray[np.int64]
    seat_row: NDArray[np.int64]

    @property
    def n_shared(self) -> int:
        """Return how many classes have several owners."""
        return int((self.single < 0).sum())

    @classmethod
    def of(cls, profile_costs: NDArray[np.float64], active: NDArray[np.bool_]) -> _OwnerClasses:
        """Return the classes of the active owners from their cost columns."""
        owner_ids = np.flatnonzero(active)
        unique, inverse = np.unique(profile_costs[:, owner_ids].T, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        several = np.bincount(inverse, minlength=len(unique)) > 1
        row = np.full(len(unique), -1, dtype=np.int64)
        row[several] = np.arange(int(several.sum()))
        in_shared = several[inverse]  # per active owner
        alone = np.full(len(unique), -1, dtype=np.int64)
        alone[inverse[~in_shared]] = owner_ids[~in_shared]
        shared = np.flatnonzero(in_shared)
        shared = shared[np.argsort(row[inverse[shared]], kind="stable")]
        return cls(
            costs=unique.T,
            single=alone,
            row=row,
            seat_owner=owner_ids[shared],
            seat_row=row[inverse[shared]],
        )

    def seats_by_owner(
        self, arrivals: NDArray[np.int64], seats: NDArray[np.int64], n_owners: int
    ) -> NDArray[np.int64]:
        """Return profiles x owners: how many of each profile's pool each owner takes.

        Args:
            arrivals: Profiles x classes, the (rounded) flow of each arc.
            seats: The (rounded) seats of each owner in ``seat_owner``.
            n_owners: How many owners there are (inactive ones included).

        A class of several owners fills its owners' seats with its profiles' arrivals in
        order; where rounding left the two totals apart, the smaller one is handed on.
        """
        out = np.zeros((arrivals.shape[0], n_owners), dtype=np.int64)
        alone = self.single >= 0
        out[:, self.single[alone]] = arrivals[:, alone]
        bounds = np.searchsorted(self.seat_row, np.arange(self.n_shared + 1))
        for c in np.flatnonzero(~alone):
            r = self.row[c]
            members = self.seat_owner[bounds[r] : bounds[r + 1]]
            p, o, k = _hand_on(arrivals[:, c], seats[bounds[r] : bounds[r + 1]])
            np.add.at(out, (p, members[o]), k)
        return out


def _hand_on(
    came: NDArray[np.int64], given: NDArray[np.int64]
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """Return (profile, member, count) runs filling members' seats with arrivals in order.

    ``came`` is per profile, ``given`` per member; where the totals differ, the smaller one is
    handed on.
    """
    came = np.cumsum(came)
    given = np.cumsum(given)
    total = min(came[-1], given[-1]) if len(came) and len(given) else 0
    cuts = np.unique(np.concatenate([[0], came, given]))
    cuts = cuts[cuts <= total]
    start = cuts[:-1]
    profile = np.searchsorted(came, start, side="right")
    member = np.searchsorted(given, start, side="right")
    return profile, member, np.diff(cuts)


@dataclass(frozen=True)
class _OwnerUnits:
    """The owners as the program's capacity rows see them: alike owners with room as one.

    Active owners that cost the same for every profile and hold no more than their capacity
    are interchangeable: whichever of them a customer leaves or joins costs the same, and as
    none starts over capacity, any split of their leavers and arrivals that fills each one at
    most to its capacity is feasible. So they get one row (their capacities summed), and their
    customers of one profile and bucket one group. An owner over capacity keeps its own row,
    since it must shed its own excess; an inactive owner is alone and takes nobody. On the
    sample's book at 5M customers this turns 33,333 owner rows into 9,423 (7,867 owners over
    capacity, 1,556 units of the rest), and the solver's 145 s into 7 s (docs/allocation.md).

    Attributes:
        unit: Per owner, its unit.
        capacity: Per unit, its owners' capacity summed.
        active: Per unit, whether it takes customers.
        first: Per unit, its first owner (whose costs are the unit's).
    """

    unit: NDArray[np.int64]
    capacity: NDArray[np.int64]
    active: NDArray[np.bool_]
    first: NDArray[np.int64]

    @classmethod
    def of(
        cls, profile_costs: NDArray[np.float64], owners: pd.DataFrame, held: NDArray[np.int64]
    ) -> _OwnerUnits:
        """Return the units of ``owners`` given their cost columns and customers held."""
        n = len(owners)
        capacity = owners["capacity"].to_numpy(dtype=np.int64)
        active = owners["active"].to_numpy(dtype=bool)
        _, kind = np.unique(profile_costs.T, axis=0, return_inverse=True)
        alone = ~active | (held > capacity)
        _, unit = np.unique(
            np.where(alone, np.arange(n), n + kind.reshape(-1)), return_inverse=True
        )
        unit = unit.reshape(-1).astype(np.int64)
        n_units = int(unit.max()) + 1 if n else 0
        first = np.full(n_units, n, dtype=np.int64)
        np.minimum.at(first, unit, np.arange(n))
        return cls(
            unit=unit,
            capacity=np.bincount(unit, weights=capacity, minlength=n_units).astype(np.int64),
            active=active[first],
            first=first,
        )

    def costs(self, profile_costs: NDArray[np.float64]) -> NDArray[np.float64]:
        """Return profiles x units: the rule cost of each unit's owners."""
        return profile_costs[:, self.first]

    def seats_by_owner(
        self,
        pool_to_unit: NDArray[np.int64],
        staying: NDArray[np.int64],
        capacity: NDArray[np.int64],
    ) -> NDArray[np.int64]:
        """Return profiles x owners from the units' arrivals, given who stayed with whom.

        A unit of several owners fills their room left after the stays evenly: seats go to the
        owners with most room first, so the unit's owners end as evenly loaded as whole
        customers allow.
        """
        size = np.bincount(self.unit, minlength=len(self.first))
        out = np.zeros((pool_to_unit.shape[0], len(self.unit)), dtype=np.int64)
        single = size[self.unit] == 1
        out[:, single] = pool_to_unit[:, self.unit[single]]
        order = np.argsort(self.unit, kind="stable")
        bounds = np.searchsorted(self.unit[order], np.arange(len(self.first) + 1))
        for u in np.flatnonzero((size > 1) & (pool_to_unit.sum(axis=0) > 0)):
            members = order[bounds[u] : bounds[u + 1]]
            arrivals = pool_to_unit[:, u]
            room = np.maximum(capacity[members] - staying[members], 0)
            p, m, k = _hand_on(arrivals, _fill_evenly(room, int(arrivals.sum())))
            np.add.at(out, (p, members[m]), k)
        return out


def _fill_evenly(room: NDArray[np.int64], total: int) -> NDArray[np.int64]:
    """Return seats per owner: ``total`` of them, taken where most room is left, at most all.

    The seats bring every owner's room down to a common level (the lowest at which they
    suffice), and the few left over go one each to the first owners at that level.
    """
    if total >= room.sum():
        return room.copy()
    low, high = 0, int(room.max())  # the level: seats = room above it
    while low < high:
        level = (low + high) // 2
        if np.maximum(room - level, 0).sum() <= total:
            high = level
        else:
            low = level + 1
    seats = np.maximum(room - low, 0)
    extra = total - int(seats.sum())
    at_level = np.flatnonzero(room >= low)[:extra]  # room - seats == low >= 1 for these
    seats[at_level] += 1
    return seats


def _optimum_by_columns(
    cost: NDArray[np.float64],
    a_ub: sp.spmatrix,
    b_ub: NDArray[np.float64],
    a_eq: sp.spmatrix,
    b_eq: NDArray[np.float64],
    upper: NDArray[np.float64],
    start: NDArray[np.bool_],
) -> tuple[NDArray[np.float64], float]:
    """Return the optimum (x, cost) of min cost.x, A_ub x <= b_ub, A_eq x = b_eq, 0 <= x <= upper.

    Column generation: HiGHS solves the program over the columns in ``start`` (the others held
    at 0); every column is then priced with that solution's duals, those whose reduced cost is
    negative join, and it solves again, until none would lower the cost. That is the optimum
    of the whole program. The columns left out must leave the first program feasible.

    On the sample's book at 1M, 10 columns join after the first solve: going on from its basis
    takes 0.1 s, solving anew 9.6 s. On ``bench_allocation.py``'s book (1M customers, 500
    owners, each its own class) some 7,000 join: 1.8 s from the basis, 0.6 s anew.
    """
    a = sp.vstack([a_ub, a_eq]).tocsc()
    inf = highs.kHighsInf
    model = highs._Highs()
    model.setOptionValue("output_flag", False)
    no_entries = np.zeros(0, dtype=np.int32)
    model.addRows(
        a.shape[0],
        np.concatenate([np.full(len(b_ub), -inf), b_eq]),
        np.concatenate([b_ub, b_eq]).astype(np.float64),
        0,
        no_entries,
        no_entries,
        np.zeros(0),
    )
    col_upper = np.where(np.isfinite(upper), upper, inf)

    def join(cols: NDArray[np.int64]) -> None:
        block = a[:, cols]
        model.addCols(
            len(cols),
            cost[cols],
            np.zeros(len(cols)),
            col_upper[cols],
            block.nnz,
            block.indptr[:-1].astype(np.int32),
            block.indices.astype(np.int32),
            block.data.astype(np.float64),
        )

    use = start.copy()
    cols = np.flatnonzero(use)
    join(cols)
    while True:
        model.run()
        status = model.getModelStatus()
        if status != highs.HighsModelStatus.kOptimal:  # cannot happen: all unassigned is feasible
            raise AllocationError(
                f"the allocation solver stopped: {model.modelStatusToString(status)}"
            )
        solution = model.getSolution()
        reduced = cost - a.T @ np.asarray(solution.row_dual)
        joining = np.flatnonzero(~use & (reduced < -1e-7))
        if not len(joining):
            break
        # Columns join at 0, so the last basis stays feasible: with few of them the primal
        # simplex goes on from it (about a pivot each); with many, a fresh dual solve costs
        # less (about as many pivots as the last one).
        warm = 4 * len(joining) < model.getInfo().simplex_iteration_count
        join(joining)
        use[joining] = True
        cols = np.concatenate([cols, joining])
        model.setOptionValue("presolve", "off" if warm else "choose")
        model.setOptionValue("simplex_strategy", 4 if warm else 1)
        if not warm:
            model.clearSolver()
    x = np.zeros(len(cost))
    x[cols] = np.asarray(solution.col_value)
    return x, float(model.getInfo().objective_function_value)


def _solve(
    groups: pd.DataFrame,
    profile_costs: NDArray[np.float64],
    capacity: NDArray[np.int64],
    active: NDArray[np.bool_],
    weights: AllocationWeights,
    budget: int,
) -> _Flows:
    """Solve the transportation problem over groups (HiGHS); return integral flows.

    "Owners" here are the units of ``_OwnerUnits`` (``profile_costs``, ``capacity`` and
    ``active`` are per unit, a group's ``stay_unit`` is one), and so are the flows' columns.
    A group with a current active owner stays unless some of it leaves, so its only variable is
    how many leave: staying is substituted out, and the group needs no row of its own. Leavers
    go to a pool per (profile, bucket) and from there either on to their profile's pool (a move,
    counted by the budget row) or out (unassigned, at the bucket's cost). Customers without a
    current owner start in a second pool per (profile, bucket), with the same two ways out.
    Profiles send customers to classes of owners (``_OwnerClasses``). So the rows are one per
    unit, per pool, per class of several units and the budget: some 4,300 at a million
    customers and 6,666 owners (8,800 with a row per owner; a row per group made 520,000 and
    took 4-10 times as long).
    """
    n_groups = len(groups)
    n_profiles, n_owners = profile_costs.shape
    if n_groups == 0:  # no customers: HiGHS refuses a program without variables
        none = np.zeros(0, dtype=np.int64)
        return _Flows(none, none, np.zeros((n_profiles, n_owners), dtype=np.int64), 0.0)
    stay_owner = groups["stay_unit"].to_numpy(dtype=np.int64)
    profile = groups["profile"].to_numpy(dtype=np.int64)
    count = groups["n"].to_numpy(dtype=np.int64)
    bucket = groups["bucket"].to_numpy(dtype=np.int64)
    n_buckets = int(bucket.max()) + 1 if n_groups else 1
    pool = profile * n_buckets + bucket  # the group's (profile, bucket) pool
    n_pools = n_profiles * n_buckets
    pools = np.arange(n_pools)
    stays = np.flatnonzero(stay_owner >= 0)
    news = np.flatnonzero(stay_owner < 0)  # one group per pool: no owner, or an inactive one
    # Owners that are inactive take no customers; active owners that cost the same for every
    # profile share one class, and a profile's arcs go to classes, not to each owner.
    classes = _OwnerClasses.of(profile_costs, active)
    n_classes = len(classes.single)
    arcs_profile = np.repeat(np.arange(n_profiles), n_classes)
    arcs_class = np.tile(np.arange(n_classes), n_profiles)
    arcs = np.arange(len(arcs_profile))
    # Variables: [leave(g), g with an owner | moved(pool) | left_out(pool) |
    #             placed_new(pool) | left_out_new(pool) | arc(profile, class) |
    #             seat(owner of a class of several)]
    v_leave = np.arange(len(stays))
    v_moved = len(stays) + pools
    v_out = v_moved + n_pools
    v_new = v_out + n_pools
    v_new_out = v_new + n_pools
    v_arc = len(stays) + 4 * n_pools + arcs
    v_seat = len(stays) + 4 * n_pools + len(arcs) + np.arange(len(classes.seat_owner))
    n_vars = len(stays) + 4 * n_pools + len(arcs) + len(classes.seat_owner)
    stay_cost = profile_costs[profile[stays], stay_owner[stays]]
    unassigned = weights.unassigned * (1.0 + pools % n_buckets)
    cost = np.concatenate(
        [
            -stay_cost,  # leaving saves the stay's rule cost, which the constant below holds
            np.full(n_pools, weights.move),
            unassigned,
            np.zeros(n_pools),
            unassigned,
            classes.costs[arcs_profile, arcs_class],
            np.zeros(len(classes.seat_owner)),
        ]
    )
    upper = np.full(n_vars, np.inf)
    upper[v_leave] = count[stays]
    held = np.bincount(stay_owner[stays], weights=count[stays], minlength=n_owners)
    new_supply = np.bincount(pool[news], weights=count[news], minlength=n_pools)

    def rows(
        entries: list[tuple[NDArray[np.int64], NDArray[np.int64], float]], n: int
    ) -> sp.coo_matrix:
        """Return a sparse block of ``n`` rows from (row, variable, coefficient) runs."""
        row = np.concatenate([r for r, _, _ in entries])
        col = np.concatenate([c for _, c, _ in entries])
        val = np.concatenate([np.full(len(r), v) for r, _, v in entries])
        return sp.coo_matrix((val, (row, col)), shape=(n, n_vars))

    # Leavers of a pool = moved on + left out.
    eq_leavers = rows(
        [(pool[stays], v_leave, 1.0), (pools, v_moved, -1.0), (pools, v_out, -1.0)], n_pools
    )
    # Customers without an owner: placed + left out = how many there are.
    eq_new = rows([(pools, v_new, 1.0), (pools, v_new_out, 1.0)], n_pools)
    # Each profile's pool: what arrives = what goes to owner classes.
    pool_profile = pools // n_buckets
    eq_profile = rows(
        [(pool_profile, v_moved, 1.0), (pool_profile, v_new, 1.0), (arcs_profile, v_arc, -1.0)],
        n_profiles,
    )
    # A class of several owners: what arrives = the seats its owners give.
    to_single = classes.single[arcs_class] >= 0
    shared = classes.row[arcs_class]
    eq_class = rows(
        [(shared[~to_single], v_arc[~to_single], 1.0), (classes.seat_row, v_seat, -1.0)],
        classes.n_shared,
    )
    # Each owner: held - leavers + arrivals <= capacity (an owner alone in its class takes
    # arrivals straight from the arcs).
    ub_owner = rows(
        [
            (stay_owner[stays], v_leave, -1.0),
            (classes.single[arcs_class[to_single]], v_arc[to_single], 1.0),
            (classes.seat_owner, v_seat, 1.0),
        ],
        n_owners,
    )
    # Moves away from an active owner: at most the budget.
    ub_budget = rows([(np.zeros(n_pools, dtype=np.int64), v_moved, 1.0)], 1)
    # Most groups that leave gain more than a move, and while the budget binds more than two:
    # the first solve lets only those leave, and of an owner over capacity the groups that
    # gain most, as many as its excess; profiles reach only the classes that cost them least.
    # Pricing adds back any other column that would lower the cost (a move that makes room, a
    # worse class when the best are full). On the sample's book (seeded tiers) the first solve
    # has 93,499 of 348,235 columns at 1M and 316,779 of 880,509 at 5M, over 4,275 and 11,253
    # rows (with a row per owner: 115,375 of 497,017 and 521,605 of 1,949,838 columns).
    best = classes.costs.min(axis=1) if n_classes else np.zeros(n_profiles)
    start = np.ones(n_vars, dtype=bool)
    gain = stay_cost - best[profile[stays]]
    start[v_leave] = (gain > 2 * weights.move) | _covering_excess(
        stay_owner[stays], gain, count[stays], (held - capacity).astype(np.float64)
    )
    start[v_arc] = classes.costs[arcs_profile, arcs_class] <= best[arcs_profile]
    solution, objective = _optimum_by_columns(
        cost,
        a_ub=sp.vstack([ub_owner, ub_budget]),
        b_ub=np.concatenate([capacity - held, [budget]]),
        a_eq=sp.vstack([eq_leavers, eq_new, eq_profile, eq_class]),
        b_eq=np.concatenate(
            [np.zeros(n_pools), new_supply, np.zeros(n_profiles), np.zeros(classes.n_shared)]
        ),
        upper=upper,
        start=start,
    )
    x = np.floor(solution + 1e-6).astype(np.int64)
    leave = np.zeros(n_groups, dtype=np.int64)
    # Leavers rounded up, so stays round down and no owner goes over capacity: a leaver the
    # rounded flows give no seat is placed by ``_place_leftovers`` (back home, when room).
    leave[stays] = np.minimum(np.ceil(solution[v_leave] - 1e-6), count[stays])
    move = leave - _spread(x[v_out], pool, leave, stays)
    move[news] = x[v_new][pool[news]]
    pool_to_owner = classes.seats_by_owner(
        x[v_arc].reshape(n_profiles, n_classes), x[v_seat], n_owners
    )
    return _Flows(
        stay=np.where(stay_owner >= 0, count - leave, 0),
        move=move,
        pool_to_owner=pool_to_owner,
        objective=objective + float((stay_cost * count[stays]).sum()),
    )


def _covering_excess(
    owner: NDArray[np.int64],
    gain: NDArray[np.float64],
    count: NDArray[np.int64],
    excess: NDArray[np.float64],
) -> NDArray[np.bool_]:
    """Return which groups of owners over capacity may leave in the first solve.

    An owner over capacity must shed its excess; the groups that gain most by leaving go
    first, so per such owner its groups by gain, highest first, until their customers cover the
    excess (every group of the level where they do). The rest join only if pricing asks.
    """
    levels = pd.DataFrame({"owner": owner, "gain": gain, "n": count})
    over = excess[owner] > 0
    totals = levels[over].groupby(["owner", "gain"], sort=True)["n"].sum()
    totals = totals.sort_index(level=["owner", "gain"], ascending=[True, False])
    higher = totals.groupby(level="owner").cumsum() - totals  # customers of higher levels
    needed = higher[higher.to_numpy() < excess[higher.index.get_level_values("owner")]]
    keep = pd.MultiIndex.from_arrays([owner, gain]).isin(needed.index)
    return np.asarray(keep & over, dtype=bool)


def _spread(
    left_out: NDArray[np.int64],
    pool: NDArray[np.int64],
    leave: NDArray[np.int64],
    members: NDArray[np.int64],
) -> NDArray[np.int64]:
    """Return per group how many of its leavers are left out: each pool's count, in group order.

    Which leavers of a pool are left out does not change the cost, so the first groups (by
    number) of each pool take its count, each up to its leavers.
    """
    order = members[np.argsort(pool[members], kind="stable")]
    before = np.cumsum(leave[order]) - leave[order]  # leavers of earlier groups, all pools
    first = np.searchsorted(pool[order], pool[order])  # where each group's pool starts
    within = before - before[first]
    out = np.zeros(len(pool), dtype=np.int64)
    out[order] = np.clip(left_out[pool[order]] - within, 0, leave[order])
    return out


def _disaggregate(
    frame: pd.DataFrame,
    flows: _Flows,
    costs: _Costs,
    owners: pd.DataFrame,
    units: _OwnerUnits,
) -> pd.DataFrame:
    """Return the customers with an owner index each (-1: none), from the group flows.

    Within a group the customers with the most value at risk stay (each with its own owner),
    the next ones move, the rest are left out; a unit's arrivals are spread over its owners'
    room (``_OwnerUnits.seats_by_owner``); within a pool the movers with the most value at
    risk go to the cheapest owners the solution sends flow to.
    """
    group = frame["group"].to_numpy()
    value = frame["value_at_risk"].to_numpy()
    # Rows by group, most value at risk first, ties in row order (a stable sort, as pandas'
    # sort_values; sorting the frame itself took 8 s of the 5M allocation).
    order = np.lexsort((-value, group))
    in_order = group[order]
    position = np.arange(len(order)) - np.searchsorted(in_order, in_order)
    stay = flows.stay[in_order]
    move = flows.move[in_order]
    stays = order[position < stay]
    movers = order[(position >= stay) & (position < stay + move)]
    stay_owner = frame["stay_owner"].to_numpy()
    owner = np.full(len(frame), -1, dtype=np.int64)
    owner[stays] = stay_owner[stays]
    pool_to_owner = units.seats_by_owner(
        flows.pool_to_owner,
        np.bincount(owner[stays], minlength=len(owners)),
        owners["capacity"].to_numpy(dtype=np.int64),
    )
    profile = frame["profile"].to_numpy()
    pool = movers[np.lexsort((-value[movers], profile[movers]))]
    targets = np.full(len(pool), -1, dtype=np.int64)
    pool_profile = profile[pool]
    starts = np.searchsorted(pool_profile, np.arange(pool_to_owner.shape[0]))
    ends = np.searchsorted(pool_profile, np.arange(pool_to_owner.shape[0]), side="right")
    for p in np.flatnonzero(pool_to_owner.sum(axis=1)):
        counts = pool_to_owner[p]
        best = np.argsort(costs.total[p], kind="stable")  # best-matched owners first
        seats = np.repeat(best, counts[best])
        take = min(len(seats), ends[p] - starts[p])
        targets[starts[p] : starts[p] + take] = seats[:take]
    owner[pool] = targets
    left = order[owner[order] < 0]
    return frame.assign(owner=_place_leftovers(owner, left, frame, costs, owners))


def _moves_from_active(frame: pd.DataFrame) -> int:
    """Return how many customers left an active current owner (placed elsewhere)."""
    owner = frame["owner"].to_numpy()
    stay = frame["stay_owner"].to_numpy()
    return int(((stay >= 0) & (owner >= 0) & (owner != stay)).sum())


def _realised_cost(frame: pd.DataFrame, costs: _Costs, weights: AllocationWeights) -> float:
    """Return the total cost of the placement in ``frame`` (same parts as the program)."""
    owner = frame["owner"].to_numpy()
    placed = owner >= 0
    profile = frame["profile"].to_numpy()
    rules = costs.total[profile[placed], owner[placed]].sum()
    moves = _moves_from_active(frame)
    left = weights.unassigned * (1.0 + frame["bucket"].to_numpy()[~placed]).sum()
    return float(rules + weights.move * moves + left)


def _place_leftovers(
    owner: NDArray[np.int64],
    left: NDArray[np.int64],
    frame: pd.DataFrame,
    costs: _Costs,
    owners: pd.DataFrame,
) -> NDArray[np.int64]:
    """Return ``owner`` with the rows in ``left`` placed while owners have room.

    These are the customers without a seat. The rounding of fractional flows leaves a handful
    of them out (only the budget row makes flows fractional); the rest have no room anywhere.
    Most value at risk first, each goes to its current owner when it has room, else to the
    cheapest owner with room.
    """
    owner = owner.copy()
    room = owners["capacity"].to_numpy(dtype=np.int64) - np.bincount(
        owner[owner >= 0], minlength=len(owners)
    )
    room[~owners["active"].to_numpy()] = 0
    value = frame["value_at_risk"].to_numpy()
    rows = pd.Series(value[left], index=left).sort_values(ascending=False).index.to_numpy()
    stay_owner = frame["stay_owner"].to_numpy()
    profile = frame["profile"].to_numpy()
    for row in rows:
        if room.max() <= 0:
            break
        stay = stay_owner[row]
        if stay >= 0 and room[stay] > 0:
            choice = int(stay)
        else:
            choice = int(np.argmin(np.where(room > 0, costs.total[profile[row]], np.inf)))
        owner[row] = choice
        room[choice] -= 1
    return owner


def _reasons(
    frame: pd.DataFrame,
    owners: pd.DataFrame,
    costs: _Costs,
) -> pd.DataFrame:
    """Return the assignments table with a reason code and the rules each owner breaks."""
    owner = frame["owner"].to_numpy()
    profile = frame["profile"].to_numpy()
    prev_index = frame["previous_index"].to_numpy()
    has_previous = frame["has_previous"].to_numpy()
    moved = _moved(frame, owner)

    def broken(o: NDArray[np.int64]) -> dict[str, NDArray[np.bool_]]:
        safe = np.maximum(o, 0)
        valid = o >= 0
        return {
            "region": valid & costs.region[profile, safe],
            "industry": valid & costs.industry[profile, safe],
            "seniority": valid & (costs.levels_short[profile, safe] > 0),
        }

    now, before = broken(owner), broken(prev_index)
    fixed = {rule: before[rule] & ~now[rule] for rule in RULES}
    known = {rule: frame[rule].to_numpy() != UNKNOWN for rule in ("region", "industry")}
    fixed["region"] &= known["region"]
    fixed["industry"] &= known["industry"]
    prev_active = frame["stay_owner"].to_numpy() >= 0
    reason = np.select(
        [
            owner < 0,
            ~has_previous,
            ~moved,
            prev_index < 0,
            ~prev_active,
            fixed["region"],
            fixed["industry"],
            fixed["seniority"],
            _full(prev_index, owner, owners),
        ],
        [
            REASONS.index(r)
            for r in (
                NO_CAPACITY,
                NEW,
                KEPT,
                OWNER_REMOVED,
                OWNER_INACTIVE,
                REGION_MISMATCH,
                INDUSTRY_MISMATCH,
                SENIORITY_MISMATCH,
                OVER_CAPACITY,
            )
        ],
        REASONS.index(REBALANCED),
    )
    code = (
        (now["region"] & known["region"]) * 1
        + (now["industry"] & known["industry"]) * 2
        + now["seniority"] * 4
    )
    spelled = [",".join(r for k, r in enumerate(RULES) if c >> k & 1) or None for c in range(8)]
    return pd.DataFrame(
        {
            "customer_id": frame["customer_id"].array,
            "owner_id": _owner_ids(owners, owner),
            "previous_owner_id": frame["previous_owner_id"].to_numpy(dtype=object),
            "reason": _text_column(REASONS, reason),
            "mismatch": _text_column(spelled, code),
            "moved": moved,
        }
    )


def _text_column(
    words: Sequence[str | None], codes: NDArray[np.int64]
) -> pd.Series | NDArray[np.object_]:
    """Return ``words[codes]``, typed as pandas would type it from Python strings.

    Built in Arrow: turning an object array of 5M strings into pandas' text column took 1.5 s,
    this 0.1 s. The type is what pandas infers from the words used (text, or object when all
    are None), so the column is the same as from the object array.
    """
    vocabulary = np.array(words, dtype=object)
    dtype = pd.Series(vocabulary[np.unique(codes)]).dtype
    if not isinstance(dtype, pd.StringDtype):
        return vocabulary[codes]
    return pd.Series(pa.array(vocabulary, type=pa.string()).take(pa.array(codes)), dtype=dtype)


def _full(
    prev_index: NDArray[np.int64], owner: NDArray[np.int64], owners: pd.DataFrame
) -> NDArray[np.bool_]:
    """Return, per customer, whether its previous owner ended the run at full capacity."""
    load = np.bincount(owner[owner >= 0], minlength=len(owners))
    capacity = owners["capacity"].to_numpy()
    full = load >= capacity
    out = np.zeros(len(owner), dtype=bool)
    known = prev_index >= 0
    out[known] = full[prev_index[known]]
    return out


def greedy_allocate(
    customers: pd.DataFrame,
    owners: pd.DataFrame,
    current: pd.Series | None = None,
    weights: AllocationWeights | None = None,
) -> pd.DataFrame:
    """Return the allocation a loop of rules would make (the benchmark's baseline).

    Customers in order of value at risk: keep the current owner when it is active and has
    room, otherwise take the cheapest owner (same cost parts) that still has room. No budget,
    no look-ahead. Columns as ``Allocation.assignments`` without reasons and mismatches.
    """
    weights = weights or AllocationWeights()
    owners = owner_table(owners)
    frame, costs = _with_profiles(
        _customer_frame(customers, owners, current, weights), owners, weights
    )
    total = costs.total
    room = np.where(owners["active"].to_numpy(), owners["capacity"].to_numpy(np.int64), 0)
    order = np.argsort(-frame["value_at_risk"].to_numpy(), kind="stable")
    owner = np.full(len(frame), -1, dtype=np.int64)
    stay = frame["stay_owner"].to_numpy()
    profile = frame["profile"].to_numpy()
    ranking = np.argsort(total, axis=1, kind="stable")
    cursor = np.zeros(len(total), dtype=np.int64)  # first owner of a profile still with room
    for i in order:
        if stay[i] >= 0 and room[stay[i]] > 0:
            choice = int(stay[i])
        else:
            ranked = ranking[profile[i]]
            c = int(cursor[profile[i]])
            while c < len(ranked) and room[ranked[c]] <= 0:
                c += 1
            cursor[profile[i]] = c
            if c == len(ranked):
                continue
            choice = int(ranked[c])
        owner[i] = choice
        room[choice] -= 1
    return pd.DataFrame(
        {
            "customer_id": frame["customer_id"].array,
            "owner_id": _owner_ids(owners, owner),
            "previous_owner_id": frame["previous_owner_id"].to_numpy(dtype=object),
            "moved": _moved(frame, owner),
        }
    )


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    """Return ``frame[name]``, or nulls when the frame has no such column."""
    if name in frame.columns:
        return frame[name]
    return pd.Series([None] * len(frame), index=frame.index, dtype=object)


def owner_workload(assignments: pd.DataFrame, owners: pd.DataFrame) -> pd.DataFrame:
    """Return one row per owner: accounts, A-tier and high-risk accounts, value at risk, moves.

    Args:
        assignments: ``Allocation.assignments`` with the customers' ``value_tier``,
            ``risk_band`` and ``value_at_risk`` added.
        owners: The owners ``allocate`` was given (every owner gets a row, also with none).
    """
    owners = owner_table(owners)
    placed = assignments[assignments["owner_id"].notna()]
    value = pd.to_numeric(_column(placed, "value_at_risk"), errors="coerce").fillna(0.0)
    per = pd.DataFrame(
        {
            "owner_id": placed["owner_id"].astype(str),
            "accounts": 1,
            "a_tier_accounts": (_column(placed, "value_tier") == "A").astype("int64"),
            "high_risk_accounts": (_column(placed, "risk_band") == "high").astype("int64"),
            "value_at_risk": value,
            "moved_in": (placed["moved"] | placed["previous_owner_id"].isna()).astype("int64"),
        }
    )
    totals = per.groupby("owner_id").sum()
    left = assignments[assignments["previous_owner_id"].notna() & assignments["moved"]]
    moved_out = left["previous_owner_id"].astype(str).value_counts()
    out = owners[["owner_id", "capacity", "active"]].copy()
    out["name"] = owners["name"] if "name" in owners.columns else None
    for column in ("accounts", "a_tier_accounts", "high_risk_accounts", "moved_in"):
        out[column] = out["owner_id"].map(totals[column]).fillna(0).astype("int64")
    out["value_at_risk"] = out["owner_id"].map(totals["value_at_risk"]).fillna(0.0)
    out["moved_out"] = out["owner_id"].map(moved_out).fillna(0).astype("int64")
    capacity = out["capacity"].astype("float64")
    out["capacity_used"] = (out["accounts"] / capacity).where(capacity > 0)
    out["active"] = out["active"].astype("int64")
    return out


def allocation_quality(
    assignments: pd.DataFrame, customers: pd.DataFrame, owners: pd.DataFrame
) -> dict[str, float]:
    """Return how well an allocation follows the rules (the benchmark and the run summary).

    Shares are over customers with an owner and a known region (industry, tier A): matched on
    region, matched on industry, A-tier with a top-seniority owner; plus moves, unassigned and
    whether any owner is over capacity.
    """
    owners = owner_table(owners).set_index("owner_id")
    frame = assignments[["customer_id", "owner_id", "moved"]].merge(
        customers.assign(customer_id=customers["customer_id"].astype(str)),
        on="customer_id",
        how="left",
    )
    placed = frame[frame["owner_id"].notna()]
    row = owners.index.get_indexer(pd.Index(placed["owner_id"].astype(str)))
    if (row < 0).any():
        raise AllocationError(
            f"assignments: column 'owner_id' names no owner in {int((row < 0).sum())} rows"
        )
    region = _key(placed["region"]) if "region" in placed else pd.Series(UNKNOWN, placed.index)
    industry = (
        _key(placed["industry"]) if "industry" in placed else pd.Series(UNKNOWN, placed.index)
    )

    def share(hits: NDArray[np.bool_], known: NDArray[np.bool_]) -> float:
        return float(hits[known].mean()) if known.any() else float("nan")

    def covered(keys: pd.Series, column: str) -> NDArray[np.bool_]:
        # Per distinct key and owner once, then looked up: a loop over 5M customers took 10 s.
        codes, words = pd.factorize(keys)
        sets = owners[column].to_numpy()
        table = np.array([[w in s for s in sets] for w in words], dtype=bool)
        return table.reshape(len(words), len(sets))[codes, row]

    region_hit = covered(region, "regions")
    industry_hit = covered(industry, "industries")
    top = int(owners.loc[owners["active"], "seniority"].max()) if owners["active"].any() else 0
    tier_a = (_column(placed, "value_tier") == "A").to_numpy()
    load = placed["owner_id"].astype(str).value_counts()
    over = int((load > owners.loc[load.index, "capacity"]).sum())
    return {
        "customers": float(len(frame)),
        "unassigned": float(frame["owner_id"].isna().sum()),
        "moves": float(frame["moved"].sum()),
        "region_match_share": share(region_hit, (region != UNKNOWN).to_numpy()),
        "industry_match_share": share(industry_hit, (industry != UNKNOWN).to_numpy()),
        "a_tier_top_seniority_share": share(
            owners["seniority"].to_numpy()[row] >= top, np.asarray(tier_a, dtype=bool)
        ),
        "owners_over_capacity": float(over),
    }
