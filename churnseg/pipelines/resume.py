"""Resumable retrain runs: the run fingerprint, the run folder it names, and a lock on it.

A retrain run is identified by its fingerprint: the SHA-256 of

- the configuration as plain data (``config_as_dict``: credentials redacted), without the
  sections that cannot change a computed stage (``publish``, ``monitoring``, ``scoring``:
  where to publish, drift thresholds, whether scoring runs on Dask, which gives equal scores),
  plus today's date (UTC) when ``cleaning.now`` is unset, because cleaning then uses the clock;
- the content (SHA-256, ``lineage.file_fingerprint``) of every extracted copy in ``raw/``;
- the code: the package version, the SHA-256 of every ``churnseg`` source file, and the versions
  of the libraries that compute results.

Inputs are fingerprinted after extraction, for files and databases alike: a database table
cannot be fingerprinted before it is read, and one rule for both keeps resuming predictable.
Extraction therefore always runs (into ``runs/.incoming/<flow run id>``); it is I/O, cheap next
to the stages it lets us skip (100,000 customers: 4 s to extract, 0.05 s to hash 72 MB), and
DuckDB writes the same bytes for the same input, so the hash is stable.

The first 16 hex digits of the fingerprint name the run folder ``<state_dir>/runs/<key>``: a
run with the same config, data and code lands in the same folder and reuses what an earlier
attempt finished there (the flows key their Prefect task caches on it). ``run.json`` in the
folder records the fingerprint's parts and every attempt; ``.lock`` keeps two runs with the same
fingerprint from writing the same folder at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import churnseg
from churnseg.pipelines.config import Config, config_as_dict
from churnseg.pipelines.lineage import file_fingerprint
from churnseg.pipelines.stages import RunPaths

# Sections only the never-cached steps read (publishing, monitoring) or that change how, not
# what, is computed (Dask scoring gives the in-process scores; a test checks it).
VOLATILE_SECTIONS = ("publish", "monitoring", "scoring")
# Libraries whose upgrade can change cleaned rows, features or models.
RESULT_LIBRARIES = ("duckdb", "ibis-framework", "numpy", "pandas", "pyarrow", "scikit-learn")
KEY_LENGTH = 16  # hex digits of the fingerprint in the folder name: 64 bits


class RunInProgressError(RuntimeError):
    """Another run with the same fingerprint is using the run folder."""


@dataclass(frozen=True)
class Fingerprint:
    """A retrain run's fingerprint: ``key`` names the run folder, ``parts`` say what went in."""

    key: str
    parts: dict[str, Any]


def fingerprint_config(config: Config, today: str | None = None) -> dict[str, Any]:
    """Return the part of the configuration that can change a computed stage, as plain data.

    Args:
        config: The run's configuration.
        today: The UTC date cleaning takes as "now" when ``cleaning.now`` is unset (default:
            today); a run resumed on another day recomputes, as its cleaning could differ.
    """
    data = config_as_dict(config)
    for section in VOLATILE_SECTIONS:
        data.pop(section, None)
    if config.cleaning.now is None:
        data["cleaning_now"] = today or datetime.now(UTC).date().isoformat()
    return data


@lru_cache(maxsize=1)
def code_fingerprint() -> dict[str, str]:
    """Return the package version, a digest of its source files and the result libraries' versions.

    A digest of the sources rather than the git commit: an edit in a dirty checkout changes it,
    a commit that touches only docs does not. Computed once per process, so it describes the
    code this process loaded even when the files are edited while it runs.
    """
    root = Path(churnseg.__file__).resolve().parent
    sources = {str(p.relative_to(root)): file_fingerprint(p) for p in sorted(root.rglob("*.py"))}
    digest = hashlib.sha256(json.dumps(sources, sort_keys=True).encode()).hexdigest()
    info = {"churnseg_version": churnseg.__version__, "source_sha256": digest}
    for name in RESULT_LIBRARIES:
        try:
            info[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info[name] = "absent"
    return info


def input_fingerprints(raw_dir: Path) -> dict[str, str]:
    """Return the SHA-256 of every extracted file (tables and CSV rejects) in ``raw_dir``."""
    return {p.name: file_fingerprint(p) for p in sorted(raw_dir.iterdir()) if p.is_file()}


def run_fingerprint(config: Config, raw_dir: Path) -> Fingerprint:
    """Return the fingerprint of a retrain run over the extracted copies in ``raw_dir``."""
    parts = {
        "config": fingerprint_config(config),
        "inputs": input_fingerprints(raw_dir),
        "code": code_fingerprint(),
    }
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
    return Fingerprint(key=digest[:KEY_LENGTH], parts=parts)


def incoming_paths(config: Config, flow_run_id: str) -> RunPaths:
    """Return where a flow run extracts its sources before their fingerprint is known."""
    return RunPaths(config.state_dir / "runs" / ".incoming" / flow_run_id)


def adopt_extract(incoming: RunPaths, paths: RunPaths) -> None:
    """Move the freshly extracted ``raw/`` into the run folder, replacing any earlier copy.

    The earlier copy has the same content (same fingerprint), but replacing it keeps ``raw/``
    complete even when files were removed from it. Call this holding the run folder's lock.
    """
    paths.root.mkdir(parents=True, exist_ok=True)
    if paths.raw.exists():
        shutil.rmtree(paths.raw)
    incoming.raw.replace(paths.raw)
    shutil.rmtree(incoming.root, ignore_errors=True)


@contextmanager
def run_lock(paths: RunPaths, holder: str) -> Iterator[None]:
    """Hold the run folder's lock for the ``with`` block, or fail at once if another run has it.

    An OS file lock (``flock``): released when the holder exits, even when it is killed, so no
    stale lock survives a crash. It does not work across machines on NFS: there, give every
    machine its own ``state_dir``.

    Raises:
        RunInProgressError: Another run with the same fingerprint holds the folder.
    """
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.lock.touch(exist_ok=True)
    with paths.lock.open("r+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = handle.read().strip() or "another run"
            raise RunInProgressError(
                f"run folder {paths.root} is in use by {other} with the same config and data; "
                "wait for it to finish, then run again to reuse its stages"
            ) from None
        handle.truncate(0)
        handle.write(holder)
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)


def record_attempt(
    paths: RunPaths, fingerprint: Fingerprint, flow_run_id: str, mlflow_run_id: str, fresh: bool
) -> list[str]:
    """Add this attempt to the folder's ``run.json``; return the earlier attempts' MLflow run ids.

    Call this holding the run folder's lock.
    """
    attempts: list[dict[str, Any]] = []
    if paths.manifest.exists():
        attempts = list(json.loads(paths.manifest.read_text(encoding="utf-8"))["attempts"])
    earlier = [a["mlflow_run_id"] for a in attempts]
    attempts.append(
        {
            "flow_run_id": flow_run_id,
            "mlflow_run_id": mlflow_run_id,
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "fresh": fresh,
        }
    )
    manifest = {"fingerprint": fingerprint.key, "parts": fingerprint.parts, "attempts": attempts}
    staged = paths.manifest.with_suffix(".json.partial")
    staged.write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
    staged.replace(paths.manifest)
    return earlier


def attempt_run_ids(paths: RunPaths) -> set[str]:
    """Return the MLflow run ids of every attempt recorded in the folder's ``run.json``."""
    if not paths.manifest.exists():
        return set()
    attempts = json.loads(paths.manifest.read_text(encoding="utf-8"))["attempts"]
    return {a["mlflow_run_id"] for a in attempts}
