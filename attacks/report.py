"""The audit report: `audit.md` and a self-contained `audit.html` beside a run's result.

Why two files: the Markdown reads well in a terminal or a code review, the HTML is one
offline file (inline CSS, plots embedded as base64 PNG, no CDN) that can be mailed around.
Every string that comes from the result is HTML-escaped in both (Markdown viewers render raw
HTML), because run ids and method names are user input.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from dpbench.attacks.metrics import CONFIDENCE
from dpbench.files import write_atomic
from dpbench.run_folder import RunFolder

__all__ = ["verdict", "write_report"]

Scores = Mapping[str, tuple[np.ndarray, np.ndarray]]
REPORT_MODE = 0o644  # a report is meant to be read by others (a temp file is 0600)

_CSS = """
body{font-family:system-ui,sans-serif;max-width:62rem;margin:2rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse;margin:1rem 0}
th,td{border:1px solid #ccc;padding:.3rem .6rem;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}
.verdict{padding:.8rem 1rem;border-left:.4rem solid #2a7;background:#f2faf5}
.verdict.warn{border-color:#c33;background:#fdf1f1}img{max-width:100%}
dl{display:grid;grid-template-columns:max-content auto;gap:.2rem 1rem}dt{font-weight:600}
""".strip()


def _fmt(x: Any, digits: int = 3) -> str:
    if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x):
        return f"{x:.{digits}f}"
    return "n/a"


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _audit(result: Mapping[str, Any]) -> Mapping[str, Any]:
    return result.get("audit") or {}


def _accounted(result: Mapping[str, Any]) -> tuple[float | None, float | None]:
    privacy = result.get("privacy") or {}
    return privacy.get("epsilon"), privacy.get("delta")


def _lower_bounds(result: Mapping[str, Any]) -> dict[str, float]:
    """Every empirical ε lower bound in the audit: one per attack, plus the canary audit's."""
    out = {n: a["epsilon_lower_bound"] for n, a in (_audit(result).get("attacks") or {}).items()}
    canary = _audit(result).get("canary")
    if isinstance(canary, Mapping) and isinstance(canary.get("epsilon_lower_bound"), (int, float)):
        out["one-run canary audit"] = canary["epsilon_lower_bound"]
    whitebox = _audit(result).get("whitebox")
    if isinstance(whitebox, Mapping):
        one_run = whitebox.get("epsilon_one_run", whitebox.get("epsilon_lower_bound"))
        if isinstance(one_run, (int, float)):
            out["white-box one-run audit"] = one_run
        parametric = whitebox.get("parametric")
        if isinstance(parametric, Mapping) and isinstance(parametric.get("epsilon_lower_bound"), (int, float)):
            out["white-box per-step audit (assumes subsampled Gaussian steps)"] = parametric["epsilon_lower_bound"]
    return out


def _leakage(attacks: Mapping[str, Mapping[str, Any]]) -> str:
    name, best = max(attacks.items(), key=lambda kv: kv[1]["auc"])
    auc = best["auc"]
    if auc < 0.55:
        level = "No attack beat chance by much"
    elif auc < 0.65:
        level = "Attacks beat chance slightly"
    elif auc < 0.8:
        level = "Attacks detect membership moderately well"
    else:
        level = "Attacks detect membership strongly"
    return f"{level}: best AUC {auc:.2f} ({name})"


def verdict(result: Mapping[str, Any]) -> str:
    """A plain-language reading of the audit against the accounted ε (unescaped text).

    A sound empirical lower bound above the accounted ε is a contradiction, so it is flagged
    as a probable bug; below it, the audit is merely consistent with the guarantee.
    """
    attacks = _audit(result).get("attacks") or {}
    bounds = _lower_bounds(result)
    if not bounds:
        return "No membership-inference attack was run, so there is no empirical evidence either way."
    eps, _ = _accounted(result)
    conf = _audit(result).get("confidence", CONFIDENCE)
    worst_name, worst = max(bounds.items(), key=lambda kv: kv[1])
    leak = _leakage(attacks) if attacks else "Only the one-run canary audit was run"
    if eps is None:
        tail = (
            f"the largest empirical lower bound is ε̂ = {worst:.2f} ({worst_name}) at {conf:.0%} "
            "confidence: the training leaks at least this much about membership."
            if worst > 0
            else "no attack gave evidence strong enough for a positive ε lower bound at this sample size."
        )
        return f"Non-private run (no accounted ε). {leak}; {tail}"
    over = {n: b for n, b in bounds.items() if b > eps}
    if over:
        which = ", ".join(f"{n} ε̂ = {b:.2f}" for n, b in over.items())
        return (
            f"WARNING: {which} exceeds the accounted ε = {eps:.2f}. A sound lower bound above the "
            f"accounted ε at {conf:.0%} confidence means the privacy accounting or its "
            "implementation is wrong, or the audit's assumptions were broken (members and "
            f"non-members not drawn alike): investigate before trusting this run. {leak}."
        )
    return (
        f"{leak}; every empirical ε̂ (max {worst:.2f}) is below the accounted ε = {eps:.2f}, "
        "consistent with the DP guarantee (a lower bound below ε cannot prove privacy, only "
        "fail to disprove it)."
    )


def _table(result: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows (escaped) of the per-attack table."""
    attacks = _audit(result).get("attacks") or {}
    fprs = [p["fpr"] for p in next(iter(attacks.values()), {}).get("tpr_at_fpr", [])]
    eps, _ = _accounted(result)
    conf = _audit(result).get("confidence", CONFIDENCE)
    header = [
        "Attack",
        "AUC",
        *[f"TPR@{100 * f:g}% FPR" for f in fprs],
        "Balanced acc.",
        f"ε̂ ({conf:.0%} lower bound)",
        "Accounted ε",
    ]
    rows = []
    for name, a in attacks.items():
        tprs = {p["fpr"]: p["tpr"] for p in a.get("tpr_at_fpr", [])}
        rows.append(
            [
                _esc(name),
                _fmt(a.get("auc")),
                *[_fmt(tprs.get(f)) for f in fprs],
                _fmt(a.get("balanced_accuracy")),
                _fmt(a.get("epsilon_lower_bound"), 2),
                _fmt(eps, 2),
            ]
        )
    canary = _audit(result).get("canary")
    if rows and isinstance(canary, Mapping):  # no ROC: the one-run audit only bounds ε
        rows.append(
            [
                "one-run canary audit",
                *["n/a"] * (len(header) - 3),
                _fmt(canary.get("epsilon_lower_bound"), 2),
                _fmt(eps, 2),
            ]
        )
    return header, rows


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    return buf.getvalue()


def _label(name: str) -> str:
    return name.replace("$", r"\$")  # keep matplotlib's mathtext from parsing user strings


def _roc_png(scores: Scores) -> bytes:
    """ROC curves on log–log axes, where the low-FPR regime that matters is visible."""
    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    floor = 1.0
    for name, (mem, non) in scores.items():
        mem, non = np.asarray(mem, float).ravel(), np.asarray(non, float).ravel()
        y = np.r_[np.ones(mem.size), np.zeros(non.size)]
        fpr, tpr, _ = roc_curve(y, np.r_[mem, non], drop_intermediate=False)
        lo = 0.5 / max(mem.size, non.size)  # log axes cannot show 0: pin it half a step down
        floor = min(floor, lo)
        ax.plot(np.maximum(fpr, lo), np.maximum(tpr, lo), label=_label(name))
    ax.plot([floor, 1], [floor, 1], "k--", lw=0.8, label="chance")
    ax.set(
        xscale="log",
        yscale="log",
        xlim=(floor, 1),
        ylim=(floor, 1.05),
        xlabel="False positive rate",
        ylabel="True positive rate",
        title="Membership-inference ROC",
    )
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    return _png(fig)


def _hist_png(scores: Scores) -> bytes:
    """Member vs non-member score histograms, one panel per attack."""
    n = len(scores)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(4 * cols, 3 * rows))
    for i, (name, (mem, non)) in enumerate(scores.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        mem, non = np.asarray(mem, float).ravel(), np.asarray(non, float).ravel()
        both = np.r_[mem, non]
        edges = np.histogram_bin_edges(both, bins=min(50, max(10, both.size // 10)))
        ax.hist(non, bins=edges, alpha=0.5, density=True, label="non-members")
        ax.hist(mem, bins=edges, alpha=0.5, density=True, label="members")
        ax.set(title=_label(name), xlabel="score (higher = member)")
        ax.legend(fontsize="small")
    fig.tight_layout()
    return _png(fig)


def _facts(result: Mapping[str, Any]) -> list[tuple[str, str]]:
    eps, delta = _accounted(result)
    audit = _audit(result)
    return [
        ("Run", _esc(result.get("run_id", "n/a"))),
        ("Method", _esc((result.get("spec") or {}).get("method", "n/a"))),
        ("Accounted ε", _fmt(eps, 2) if eps is not None else "none (non-private)"),
        ("δ", _esc(delta) if delta is not None else "n/a"),
        ("Members / non-members", f"{_esc(audit.get('n_members', 'n/a'))} / {_esc(audit.get('n_nonmembers', 'n/a'))}"),
        ("Confidence of ε̂", _esc(audit.get("confidence", "n/a"))),
        *_reference_facts(audit),
    ]


def _reference_facts(audit: Mapping[str, Any]) -> list[tuple[str, str]]:
    refs = audit.get("references")
    if not isinstance(refs, Mapping):
        return []
    return [
        (
            "Reference models (lira, rmia)",
            f"{_esc(refs.get('models', 'n/a'))} × {_esc(refs.get('steps', 'n/a'))} non-private steps on "
            f"{_esc(refs.get('examples_per_model', 'n/a'))} examples; "
            f"{_esc(refs.get('population_samples', 'n/a'))} population samples",
        )
    ]


def _notes(result: Mapping[str, Any]) -> list[str]:
    """Audit notes and utility notes (e.g. a canary-trained model), escaped."""
    notes = list(_audit(result).get("notes") or []) + list((result.get("utility") or {}).get("notes") or [])
    return [_esc(n) for n in notes]


_CANARY_LABELS = {
    "m": "Canaries (each in training with probability ½)",
    "included": "Included in training",
    "guesses": "Guesses made (the rest abstained)",
    "correct": "Correct guesses",
    "epsilon_lower_bound": "ε̂ (one-run lower bound)",
    "confidence": "Confidence",
    "score": "Canary score",
    "seed": "Seed",
    "note": "Note",
}


_WHITEBOX_LABELS = {
    "violation": "VIOLATION (an audit shows the run less private than accounted; flags say which)",
    "flags": "Per audit: less private than accounted?",
    "epsilon_one_run": "ε̂, the stronger one-run bound",
    "epsilon_lower_bound": "ε̂, Steinke et al. 2023 (assumes only the (ε, δ) claim; on steinke_m canaries)",
    "ceiling": "its ceiling (every guess right)",
    "guesses": "Guesses made (Steinke)",
    "correct": "Correct guesses (Steinke)",
    "fraction_called_in": "Share of canaries the scores call included (how guesses split between in and out)",
    "epsilon_lower_bound_fdp": "ε̂, f-DP analysis of Mahloujifar et al. 2024 (against fdp_null)",
    "parametric": "Per-step parametric audit (assumes every step is a subsampled Gaussian)",
    "ceiling_fdp": "its ceiling",
    "accounted_epsilon": "Accounted ε",
    "m": "Gradient canaries (each in training with probability ½, then sampled per step at the run's rate)",
    "included": "Included in training",
    "canary_steps": "Canary-steps that entered training",
    "steps_observed": "Released gradients observed (white box: every step)",
    "inserted": "How a canary enters a step",
    "score": "Score",
    "confidence": "Confidence",
    "seed": "Seed",
    "note": "Note",
}
WHITEBOX_SECTION = "White-box audit (gradient canaries)"


def _section_rows(section: Any, labels: Mapping[str, str]) -> list[tuple[str, str]]:
    if not isinstance(section, Mapping):
        return []
    known = [k for k in labels if k in section] + [k for k in section if k not in labels]
    out = []
    for k in known:
        v = section[k]
        if isinstance(v, Mapping):  # a nested section (the per-step audit, the flags): key = value pairs
            text = "; ".join(f"{_esc(a)} = {_fmt(b, 3) if isinstance(b, float) else _esc(b)}" for a, b in v.items())
        else:
            text = _fmt(v, 3) if isinstance(v, float) else ("yes" if v is True else "no" if v is False else _esc(v))
        out.append((_esc(labels.get(k, k)), text))
    return out


def _canary_rows(result: Mapping[str, Any]) -> list[tuple[str, str]]:
    return _section_rows(_audit(result).get("canary"), _CANARY_LABELS)


def _whitebox_rows(result: Mapping[str, Any]) -> list[tuple[str, str]]:
    return _section_rows(_audit(result).get("whitebox"), _WHITEBOX_LABELS)


def _markdown(result: Mapping[str, Any], plots: bool) -> str:
    header, rows = _table(result)
    cell = lambda s: s.replace("|", "\\|")  # noqa: E731 - table cells only
    out = [f"# Privacy audit: {_esc(result.get('run_id', 'n/a'))}", ""]
    out += [f"- **{k}**: {cell(v)}" for k, v in _facts(result)]
    out += ["", "## Verdict", "", _esc(verdict(result)), "", "## Attacks", ""]
    if rows:
        out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    else:
        out.append("No attacks were run.")
    if canary := _canary_rows(result):
        out += ["", "## One-run canary audit", ""] + [f"- **{k}**: {cell(v)}" for k, v in canary]
    if whitebox := _whitebox_rows(result):
        out += ["", f"## {WHITEBOX_SECTION}", ""] + [f"- **{k}**: {cell(v)}" for k, v in whitebox]
    if notes := _notes(result):
        out += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    out += ["", "## Plots", ""]
    out += (
        [
            f"![ROC curves (log-log)]({RunFolder.report_roc.name})",
            "",
            f"![Score histograms]({RunFolder.report_hist.name})",
        ]
        if plots
        else ["No member/non-member scores were given, so there are no plots."]
    )
    return "\n".join(out) + "\n"


def _html(result: Mapping[str, Any], roc: bytes | None, hist: bytes | None) -> str:
    header, rows = _table(result)
    text = verdict(result)
    warn = " warn" if text.startswith("WARNING") else ""
    title = f"Privacy audit: {_esc(result.get('run_id', 'n/a'))}"
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{title}</title><style>{_CSS}</style></head><body>",
        f"<h1>{title}</h1>",
        "<dl>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in _facts(result)) + "</dl>",
        f'<h2>Verdict</h2><p class="verdict{warn}">{_esc(text)}</p>',
        "<h2>Attacks</h2>",
    ]
    if rows:
        parts.append(
            "<table><tr>"
            + "".join(f"<th>{_esc(h)}</th>" for h in header)
            + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
            + "</table>"
        )
    else:
        parts.append("<p>No attacks were run.</p>")
    if canary := _canary_rows(result):
        parts.append(
            "<h2>One-run canary audit</h2><dl>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in canary) + "</dl>"
        )
    if whitebox := _whitebox_rows(result):
        parts.append(
            f"<h2>{WHITEBOX_SECTION}</h2><dl>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in whitebox) + "</dl>"
        )
    if notes := _notes(result):
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{n}</li>" for n in notes) + "</ul>")
    parts.append("<h2>Plots</h2>")
    if roc is not None and hist is not None:
        for alt, png in (("ROC curves (log-log)", roc), ("Score histograms", hist)):
            data = base64.b64encode(png).decode("ascii")
            parts.append(f'<p><img alt="{alt}" src="data:image/png;base64,{data}"></p>')
    else:
        parts.append("<p>No member/non-member scores were given, so there are no plots.</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(folder: RunFolder, result: Mapping[str, Any], scores: Scores) -> tuple[Path, Path]:
    """Write `audit.md`, `audit.html` (and `audit_roc.png`, `audit_hist.png`) into the run folder.

    ``result`` is shaped like the result schema (its `audit.attacks` summaries fill the
    table); ``scores`` maps attack name -> (member scores, non-member scores) for the plots.
    Returns (markdown path, HTML path).
    """
    folder.create()
    roc = hist = None
    if scores:
        roc, hist = _roc_png(scores), _hist_png(scores)
        write_atomic(folder.report_roc, roc, REPORT_MODE)
        write_atomic(folder.report_hist, hist, REPORT_MODE)
    else:  # a re-audit without scores must not leave plots from an earlier one behind
        for stale in (folder.report_roc, folder.report_hist):
            stale.unlink(missing_ok=True)
    md, page = folder.report_markdown, folder.report_html
    write_atomic(md, _markdown(result, plots=bool(scores)).encode("utf-8"), REPORT_MODE)
    write_atomic(page, _html(result, roc, hist).encode("utf-8"), REPORT_MODE)
    return md, page
