"""The audit report: files written, plots embedded, user strings escaped, verdict honest."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from dpbench.attacks.metrics import attack_summary
from dpbench.attacks.report import verdict, write_report
from dpbench.run_folder import RunFolder

HOSTILE = "<script>alert(1)</script>"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _scores(shift: float, n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(shift, 1, n), rng.normal(0, 1, n)


def _result(scores, epsilon: float | None, method: str = "dpsgd", run_id: str = "run-1") -> dict:
    attacks = {name: attack_summary(m, n, delta=1e-5) for name, (m, n) in scores.items()}
    return {
        "run_id": run_id,
        "spec": {"method": method},
        "privacy": {"private": epsilon is not None, "epsilon": epsilon, "delta": 1e-5},
        "audit": {"n_members": 200, "n_nonmembers": 200, "confidence": 0.95, "attacks": attacks},
    }


def test_report_files_written_with_embedded_plots(tmp_path):
    scores = {"loss": _scores(0.0), "zlib": _scores(0.1, seed=1)}
    md, page = write_report(RunFolder(tmp_path), _result(scores, 8.0), scores)
    assert (md, page) == (tmp_path / "audit.md", tmp_path / "audit.html")
    for png in ("audit_roc.png", "audit_hist.png"):
        assert (tmp_path / png).read_bytes().startswith(PNG_MAGIC)
    text = page.read_text()
    assert text.count('<img alt="') == 2
    # The embedded image is the ROC file, byte for byte.
    start = text.index("data:image/png;base64,") + len("data:image/png;base64,")
    embedded = base64.b64decode(text[start : text.index('"', start)])
    assert embedded == (tmp_path / "audit_roc.png").read_bytes()
    assert "http://" not in text and "https://" not in text  # offline: no CDN
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temp files
    assert page.stat().st_mode & 0o044 == 0o044  # readable by others, unlike mkstemp's 0600
    md_text = md.read_text()
    assert "audit_roc.png" in md_text and "| loss |" in md_text and "TPR@0.1% FPR" in md_text


def test_hostile_strings_are_escaped(tmp_path):
    scores = {HOSTILE: _scores(0.0)}
    result = _result(scores, 8.0, method=HOSTILE, run_id=HOSTILE)
    md, page = write_report(RunFolder(tmp_path), result, scores)
    for text in (page.read_text(), md.read_text()):
        assert HOSTILE not in text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text


def test_table_puts_empirical_and_accounted_epsilon_side_by_side(tmp_path):
    scores = {"loss": _scores(0.0)}
    result = _result(scores, 8.0)
    result["audit"]["attacks"]["loss"]["epsilon_lower_bound"] = 0.4321
    md, _ = write_report(RunFolder(tmp_path), result, scores)
    row = next(line for line in md.read_text().splitlines() if line.startswith("| loss |"))
    assert row.rstrip(" |").endswith("0.43 | 8.00")


def test_verdict_private_consistent():
    scores = {"loss": _scores(0.0)}
    text = verdict(_result(scores, 8.0))
    assert text.startswith("No attack beat chance by much")
    assert "below the accounted ε = 8.00" in text and "consistent with the DP guarantee" in text


def test_verdict_flags_lower_bound_above_accounted_epsilon(tmp_path):
    scores = {"loss": _scores(4.0)}  # near-perfect attack: ε̂ ≈ 3 on 100 per class
    result = _result(scores, 0.5)
    assert result["audit"]["attacks"]["loss"]["epsilon_lower_bound"] > 0.5
    text = verdict(result)
    assert text.startswith("WARNING") and "exceeds the accounted ε = 0.50" in text
    _, page = write_report(RunFolder(tmp_path), result, scores)
    assert 'class="verdict warn"' in page.read_text()


def test_verdict_counts_the_canary_bound():
    result = _result({"loss": _scores(0.0)}, 1.0)
    result["audit"]["canary"] = {"epsilon_lower_bound": 2.5, "m": 1000}
    assert "one-run canary audit ε̂ = 2.50 exceeds" in verdict(result)


def test_verdict_non_private_reports_leakage():
    text = verdict(_result({"loss": _scores(2.0)}, None))
    assert text.startswith("Non-private run")
    assert "strongly" in text and "leaks at least" in text


def test_report_without_attacks_or_scores(tmp_path):
    result = {
        "run_id": "r",
        "spec": {"method": "nonprivate"},
        "privacy": {"epsilon": None, "delta": None},
        "audit": None,
    }
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "audit_roc.png").write_bytes(PNG_MAGIC)  # from an earlier audit
    md, page = write_report(RunFolder(tmp_path / "new"), result, {})
    assert not (tmp_path / "new" / "audit_roc.png").exists()
    assert "No attacks were run." in md.read_text()
    assert "data:image/png" not in page.read_text()
    assert verdict(result).startswith("No membership-inference attack was run")


@pytest.mark.parametrize("name", ["$x^2$", "a_b|c"])
def test_odd_attack_names_do_not_break_plots_or_tables(tmp_path, name):
    scores = {name: _scores(0.5)}
    md, _ = write_report(RunFolder(tmp_path), _result(scores, 8.0), scores)
    assert "a_b\\|c" in md.read_text() if "|" in name else name in md.read_text()
