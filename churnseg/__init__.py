"""churnseg: customer segmentation and churn-risk scoring as of a cutoff date."""

import os

# scikit-learn's OpenMP threads (libgomp) otherwise spin on the CPU while they wait for each
# other. Beside any other work on the machine (a DuckDB query, another run, a CPU quota) a
# spinning thread takes the time its partner needs: a HistGradientBoosting fit ran 2.7-3.3x
# slower than with passive waiting (bench/bench_threads.py). libgomp reads this once, when it
# is loaded, so it takes effect when churnseg is imported before scikit-learn; a value already
# set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
