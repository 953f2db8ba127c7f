"""The report page: rendered from small hand-made inputs, self-contained, and shown in Chromium."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from churnseg.pipelines.report import (
    DriftView,
    ModelPerformance,
    ReportData,
    lift_table,
    render_report,
)

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "screenshot_report.sh"


def _data() -> ReportData:
    profiles = pd.DataFrame(
        {
            "snapshot_date": ["2026-01-01", "2026-01-01"],
            "segment_id": [0, 1],
            "segment_name": ["Champions", "At risk <b>"],
            "size": [30, 70],
            "share": [0.3, 0.7],
            "revenue_share": [0.8, 0.2],
            "churn_rate": [0.05, 0.4],
            "profile": [json.dumps({"recency_days": 10.0}), json.dumps({"recency_days": 200.0})],
        }
    )
    rng = np.random.default_rng(0)
    proba = rng.uniform(size=200)
    y = (rng.uniform(size=200) < proba).astype(float)
    psi = pd.DataFrame(
        {
            "feature": ["monetary_total", "recency_days"],
            "kind": ["numeric", "numeric"],
            "psi": [0.4, 0.02],
            "severity": ["major", "none"],
        }
    )
    return ReportData(
        title="churnseg report: test",
        generated_at="2026-01-02 03:04 UTC",
        profiles=profiles,
        performance=ModelPerformance(3, y, proba, {"val_roc_auc": 0.81, "val_ece": 0.03}),
        drift=DriftView(
            run_id="abc",
            started="2026-01-02 03:00",
            summary={
                "flagged": True,
                "reasons": ["feature monetary_total: PSI 0.400 >= 0.25"],
                "score": {
                    "score_psi": 0.05,
                    "score_mean_reference": 0.3,
                    "score_mean_current": 0.32,
                },
                "segment_moved_share": 0.12,
            },
            feature_psi=psi,
            calibration=pd.DataFrame(columns=["snapshot_date", "gap"]),
            thresholds={"moderate": 0.1, "major": 0.25},
        ),
        top_customers=pd.DataFrame(
            {
                "customer_id": ["C2", "C1"],
                "churn_probability": [0.9, 0.8],
                "value_at_risk": [None, None],
            }
        ),
        notes={},
    )


def test_lift_table_by_hand() -> None:
    y = np.array([1, 1, 0, 0, 1, 0, 0, 0, 0, 0], dtype=float)  # base rate 0.3
    proba = np.linspace(1.0, 0.1, 10)  # already in descending order
    table = lift_table(y, proba, bins=5)
    assert table.churn_rate.tolist() == [1.0, 0.0, 0.5, 0.0, 0.0]
    assert table.lift.tolist() == pytest.approx([1 / 0.3, 0.0, 0.5 / 0.3, 0.0, 0.0])
    assert table.cumulative_gain.tolist() == pytest.approx([2 / 3, 2 / 3, 1.0, 1.0, 1.0])


def test_page_is_self_contained_and_escaped() -> None:
    page = render_report(_data())
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("data:image/png;base64,") == 3, "segment, performance and PSI charts"
    assert "http://" not in page and "https://" not in page and "<link" not in page
    assert "At risk &lt;b&gt;" in page, "segment names are escaped"
    assert "value at risk not computed; ordered by churn risk" in page
    assert '<span class="flag">flagged</span>' in page
    assert "feature monetary_total: PSI 0.400 &gt;= 0.25" in page


def test_missing_sections_say_why() -> None:
    empty = ReportData(
        title="t",
        generated_at="now",
        notes={"drift": "no monitoring run yet (run churnseg monitor)"},
    )
    page = render_report(empty)
    assert '<p class="note">no monitoring run yet (run churnseg monitor)</p>' in page
    assert "data:image/png" not in page


@pytest.mark.skipif(
    shutil.which("chromium") is None,
    reason="chromium is not on PATH (apt-get install -y chromium) - screenshot not taken",
)
def test_screenshot_script_renders_the_page(tmp_path: Path) -> None:
    html_file = tmp_path / "report.html"
    html_file.write_text(render_report(_data()), encoding="utf-8")
    png = tmp_path / "report.png"
    done = subprocess.run(
        [str(SCRIPT), str(html_file), str(png), "1280,1600"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    header = png.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", "a PNG file"
    width, height = struct.unpack(">II", header[16:24])
    assert (width, height) == (1280, 1600)
    assert png.stat().st_size > 50_000, "a blank page compresses to a few KB; charts do not"
