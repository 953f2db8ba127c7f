"""churnseg: customer segmentation and churn-risk scoring as of a cutoff date."""

import os

# scikit-learn's OpenMP threads (libgomp, on Linux) spin 300,000 times while they wait for each
# other before they sleep. Beside any other work on the machine (another run, a DuckDB query, a
# CPU quota) a spinning thread holds the core its partner needs. A HistGradientBoosting fit
# beside two busy processes took 14.9 s, with 1,000 spins 8.0 s; alone 3.64 s and 3.79 s
# (bench/bench_threads.py; OMP_WAIT_POLICY=PASSIVE, no spinning, 5.66 s alone).
# libgomp reads this once, when it loads, so it applies when churnseg is imported before
# scikit-learn; a wait policy or spin count the user set wins.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")

__version__ = "0.1.0"
