"""OpenMP waiting: a HistGradientBoosting fit alone and beside busy processes.

scikit-learn's histogram gradient boosting runs many short OpenMP parallel regions per tree. By
default libgomp's threads spin 300,000 times while they wait for each other; when other
processes want the same cores (a DuckDB query, another run, a container's CPU quota) a spinning
thread keeps its partner off the CPU. ``churnseg`` sets ``GOMP_SPINCOUNT=1000`` unless the user
set a wait policy or spin count (``churnseg/__init__.py``). This prints the fit's wall time with
libgomp's default, with churnseg's and with ``OMP_WAIT_POLICY=PASSIVE`` (no spinning), each in a
fresh process (libgomp reads them when it loads), with 0 and with ``--busy`` spinning processes
beside it, alternately ``--repeats`` times.

Example: python bench/bench_threads.py --busy 2 --repeats 3
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time

FIT = """
import time
import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
rng = np.random.default_rng(0)
X = rng.normal(size=({rows}, 100))
y = (X[:, 0] + rng.normal(size={rows}) > 0).astype(int)
began = time.perf_counter()
HistGradientBoostingClassifier(max_iter=100, early_stopping=False, random_state=0).fit(X, y)
print(time.perf_counter() - began)
"""

# Environment of each variant; empty: libgomp's default (300,000 spins, then sleep).
POLICIES: dict[str, dict[str, str]] = {
    "libgomp default": {},
    "churnseg (1,000 spins)": {"GOMP_SPINCOUNT": "1000"},
    "PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
}


def _spin(stop: float) -> None:
    while time.monotonic() < stop:
        pass


def fit_seconds(variant: dict[str, str], rows: int) -> float:
    """Return the wall time of one fit in a fresh interpreter with ``variant``'s environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_"))}
    env |= variant
    out = subprocess.run(
        [sys.executable, "-c", FIT.format(rows=rows)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--busy", type=int, default=2, help="spinning processes beside the fit")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"cores: {os.cpu_count()}, load average at start: {os.getloadavg()[0]:.1f}")
    print(f"HistGradientBoosting, 100 trees on {args.rows:,} x 100 (median of {args.repeats}):")
    for busy in sorted({0, 1, args.busy}):
        times: dict[str, list[float]] = {name: [] for name in POLICIES}
        spinners = [
            mp.Process(target=_spin, args=(time.monotonic() + 3600,), daemon=True)
            for _ in range(busy)
        ]
        for p in spinners:
            p.start()
        try:
            for _ in range(args.repeats):
                for name, variant in POLICIES.items():
                    times[name].append(fit_seconds(variant, args.rows))
        finally:
            for p in spinners:
                p.terminate()
        line = ", ".join(f"{name} {statistics.median(t):6.1f} s" for name, t in times.items())
        print(f"  beside {busy} busy process(es): {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
