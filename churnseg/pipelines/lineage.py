"""Lineage of a run: which data (fingerprints, rows, dates) and which code trained the models."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

import churnseg


def file_fingerprint(path: Path, chunk: int = 1 << 20) -> str:
    """Return the SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def code_version() -> dict[str, str]:
    """Return the package version and, in a git checkout, the commit and whether it is dirty."""
    info = {"churnseg_version": churnseg.__version__}
    root = Path(churnseg.__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        info["git_commit"] = commit
        info["git_dirty"] = str(bool(dirty)).lower()
    except (OSError, subprocess.SubprocessError):
        pass  # an installed package outside a checkout has no commit to report
    return info


def input_lineage(raw_dir: Path, rows: dict[str, int]) -> dict[str, Any]:
    """Return per extracted table: SHA-256 of its copy and rows read."""
    return {
        name: {"sha256": file_fingerprint(raw_dir / f"{name}.parquet"), "rows": rows[name]}
        for name in sorted(rows)
    }
