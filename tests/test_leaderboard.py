"""Leaderboard: validation of every file, seed aggregation, escaping, determinism, --check."""

from __future__ import annotations

import base64
import copy
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from dpbench.files import write_json_atomic
from dpbench.leaderboard.aggregate import MIB, Stat, aggregate, options
from dpbench.leaderboard.cli import leaderboard_command
from dpbench.leaderboard.columns import audit_badge
from dpbench.leaderboard.render import build, render_markdown
from dpbench.schemas import validation_errors
from dpbench.spec import RunSpec

FIXTURES = Path(__file__).parent / "fixtures" / "results"
FIXTURE = FIXTURES / "scienceqa-dpsgd-eps3-tiny-llava-s0-9d29bea0e58e.json"
HOSTILE = "<script>alert(1)</script>"


def make_result(
    method: str = "dpsgd",
    epsilon: float | None = 3.0,
    seed: int = 0,
    accuracy: float = 0.7,
    model: str = "tiny-llava",
    **spec_changes,
) -> dict:
    """The fixture result with its spec (and the fields that follow from it) replaced."""
    r = copy.deepcopy(json.loads(FIXTURE.read_text()))
    spec = RunSpec.from_dict(r["spec"]).replace(
        method=method,
        model=model,
        **{"privacy.epsilon": epsilon, "training.seed": seed, "training.lr": None, **spec_changes},
    )  # None: the method's
    r["spec"] = spec.to_dict()
    r["run_id"] = re.sub(r"[^A-Za-z0-9._+-]", "", spec.run_id())  # hostile names are not valid ids
    r["utility"]["metrics"]["accuracy"] = accuracy
    if method == "nonprivate":
        r["privacy"].update(private=False, epsilon=None, target_epsilon=None, delta=None, noise_multiplier=None)
        r["audit"] = None
    assert validation_errors(r) == []
    return r


def write_results(folder: Path, results: list[dict]) -> Path:
    for r in results:
        write_json_atomic(folder / f"{r['run_id']}.json", r)
    return folder


@pytest.fixture(autouse=True)
def away_from_the_repository(tmp_path, monkeypatch):
    """The command reads `leaderboard/results` and `benchmarks/` by default: keep the repo's out."""
    monkeypatch.chdir(tmp_path)


def invoke(*args: str):
    return CliRunner().invoke(leaderboard_command, list(args))


def tables(readme: str, task: str = "scienceqa") -> tuple[list[str], list[str]]:
    """A task's compact main table and its full table (in the details view), as Markdown lines."""
    section = readme.split(f"## {task}\n", 1)[1].split("\n## ", 1)[0].split("### ", 1)[0]
    main, full = section.split("<details>", 1)
    rows = lambda text: [line for line in text.splitlines() if line.startswith("|")]  # noqa: E731
    return rows(main), rows(full)


def test_fixture_is_schema_valid():
    assert validation_errors(json.loads(FIXTURE.read_text())) == []


def test_valid_fixture_renders_and_then_checks_clean(tmp_path):
    out = tmp_path / "board"
    result = invoke("--results", str(FIXTURES), "--out", str(out))
    assert result.exit_code == 0, result.output
    readme = (out / "README.md").read_text()
    main, full = tables(readme)
    assert main[0] == (
        "| Method | Options | ε (accounted) ↓ | Utility ↑ | ε̂ strongest ↓ | Audit | Peak memory (MiB) ↓ "
        "| Train samples/s ↑ | Seeds |"
    )
    (compact,) = [line for line in main if line.startswith("| dpsgd")]
    # the fixture's attacks are the audit's settings: a badge beside the method, not an option; the
    # record predates the audit section, so it reads as it meant then (RECORD_DEFAULTS): no gradient
    # canaries, every member scored
    assert compact.startswith(
        "| dpsgd · audit: attacks loss, zlib, mink, mink++, reference, image, gradient canaries 0, every member | "
    )
    assert "attacks" not in compact.split(" | ")[1]
    assert "| 2.98 | 0.700 | 0.35 (MIA) | — | 512.0 | 32.0 | 1 |" in compact
    (row,) = [line for line in full if line.startswith("| dpsgd")]  # the full table keeps every column
    assert len(full[0].split(" | ")) == 21 and 'attacks=["loss", "zlib"' in row
    # the sources, said once above the table rather than in every row
    assert "embedded sample" not in row and "not a released model" not in row
    task_line = next(line for line in readme.splitlines() if line.startswith("Utility:"))
    for said in ("embedded sample", "not the real dataset", "not a released model", "sha256 3e28ed6f3828"):
        assert said in task_line, said
    page = (out / "index.html").read_text()
    assert '<td>dpsgd <span class="badge">audit: attacks loss' in page and "<td>dpsgd</td>" in page
    assert 'class="sortable"' in page and page.count('<div class="wide main-table">') == 1
    assert "http://" not in page and "https://" not in page  # offline: nothing fetched
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 3  # the task's frontier and audit plots, and the cpu memory/throughput bars
    # frontier: dpsgd's point and the zero-shot line; audit: the zlib attack's ε̂; bars: memory and speed
    assert re.findall(r'data-points="(\d+)"', page) == ["2", "1", "2"]
    assert all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    assert invoke("--results", str(FIXTURES), "--out", str(out), "--check").exit_code == 0


def test_schema_errors_fail_check_and_name_every_file_and_path(tmp_path):
    results = tmp_path / "results"
    write_results(results, [make_result()])
    bad = make_result(seed=1)
    bad["utility"]["metrics"]["accuracy"] = "high"
    bad["privacy"]["sample_rate"] = 2
    write_json_atomic(results / "bad.json", bad)
    (results / "run-x").mkdir()
    (results / "run-x" / "result.json").write_text("{not json")
    result = invoke("--results", str(results), "--out", str(tmp_path / "board"), "--check")
    assert result.exit_code == 1
    assert re.search(r"bad\.json: \$\.utility\.metrics\.accuracy: 'high' is not of type 'number'", result.output)
    assert re.search(r"bad\.json: \$\.privacy\.sample_rate: ", result.output)
    assert re.search(r"run-x/result\.json: \$: not valid JSON", result.output)
    # Without --check an invalid result also stops the render: nothing is written.
    assert invoke("--results", str(results), "--out", str(tmp_path / "board")).exit_code == 1
    assert not (tmp_path / "board").exists()


def test_hostile_strings_are_escaped_in_html_and_markdown(tmp_path):
    results = write_results(
        tmp_path / "results",
        [
            make_result(method=HOSTILE + " $\\frac{$", model="evil|model", method_options={"x": "</td><b>"}),
            make_result(method="nonprivate", epsilon=None, model="evil|model"),
        ],
    )
    board = build([results])
    readme, page = board.files["README.md"], board.files["index.html"]
    for text in (readme, page):
        assert HOSTILE not in text and "</td><b>" not in text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert page.count("<script>") == 1  # only the page's own sorting script
    for lines in tables(readme):  # the main table and the full one
        row = next(line for line in lines if "alert" in line)
        cells = re.split(r"(?<!\\)\|", row)  # an unescaped | in the model name would add a cell
        assert len(cells) == len(re.split(r"(?<!\\)\|", lines[0]))
    assert "evil\\|model" in row and "Model: evil\\|model" in readme  # the full table; once above the main


def test_seeds_aggregate_to_mean_and_sample_std():
    results = [make_result(seed=s, accuracy=a) for s, a in ((0, 0.5), (1, 0.7), (2, 0.9))]
    for r, eps in zip(results, (2.9, 3.0, 3.1)):
        r["privacy"]["epsilon"] = eps
    other_eps = make_result(epsilon=8.0, accuracy=0.1)
    baseline = make_result(method="nonprivate", epsilon=None, accuracy=0.95)
    rows = aggregate([other_eps, *results, baseline])
    assert [(r.method, r.target_epsilon, r.n_seeds) for r in rows] == [
        ("nonprivate", None, 1),
        ("dpsgd", 3.0, 3),
        ("dpsgd", 8.0, 1),
    ]
    row = rows[1]
    assert row.utility.mean == pytest.approx(0.7) and row.utility.std == pytest.approx(0.2)
    assert row.epsilon.mean == pytest.approx(3.0) and row.epsilon.std == pytest.approx(0.1)
    assert row.seeds == (0, 1, 2)
    assert rows[2].utility == Stat(0.1, None, 1)  # one seed: no spread to report
    readme = render_markdown(rows, 5)
    zero = f"{results[0]['model']['zero_shot']['accuracy']:.3f}"  # the pre-trained model, next to utility
    main, full = tables(readme)
    assert any("| 3.00 ± 0.10 | 0.700 ± 0.200 | 0.35 ± 0.00 (MIA) |" in line for line in main)
    assert any(f"| 0.700 ± 0.200 | {zero} | 3.00 ± 0.10 |" in line for line in full)
    baseline_row = next(line for line in full if line.startswith("| nonprivate"))
    assert (
        f"| non-private | 0.950 | {zero} | — | — | — | — | — | — | — | — | — | — | — | 512.0 |" in baseline_row
    )  # no accounting, no audit


def test_best_attack_is_the_one_with_highest_mean_over_seeds():
    a, b = make_result(seed=0), make_result(seed=1)
    a["audit"]["attacks"]["loss"]["epsilon_lower_bound"] = 1.0  # best in one seed only
    a["audit"]["attacks"]["zlib"]["epsilon_lower_bound"] = 0.6
    b["audit"]["attacks"]["loss"]["epsilon_lower_bound"] = 0.0
    b["audit"]["attacks"]["zlib"]["epsilon_lower_bound"] = 0.6
    (row,) = aggregate([a, b])
    assert row.eps_hat_attack == "zlib" and row.eps_hat.mean == pytest.approx(0.6)
    assert row.tpr_at_1pct_fpr.mean == pytest.approx(0.03)  # loss attack's TPR at fpr 0.01


def test_no_attack_is_named_when_every_empirical_epsilon_is_zero():
    r = make_result()
    for attack in r["audit"]["attacks"].values():
        attack["epsilon_lower_bound"] = 0.0
    (row,) = aggregate([r])
    assert row.eps_hat.mean == 0 and row.eps_hat_attack is None
    assert row.auc_attack is not None  # the best AUC still names its attack


def test_check_detects_modified_or_missing_files(tmp_path):
    results = write_results(tmp_path / "results", [make_result(), make_result(seed=1, accuracy=0.8)])
    out = tmp_path / "board"
    assert invoke("--results", str(results), "--out", str(out)).exit_code == 0
    readme = out / "README.md"
    readme.write_text(readme.read_text().replace("0.750", "0.990"))
    result = invoke("--results", str(results), "--out", str(out), "--check")
    assert result.exit_code == 1 and "README.md" in result.output and "index.html" not in result.output
    assert invoke("--results", str(results), "--out", str(out)).exit_code == 0
    # A new result changes both files, plots included, so check fails until re-rendered.
    write_results(results, [make_result(seed=2, accuracy=0.1)])
    result = invoke("--results", str(results), "--out", str(out), "--check")
    assert result.exit_code == 1 and "README.md" in result.output and "index.html" in result.output


def test_output_is_deterministic_and_independent_of_folder_order(tmp_path):
    one = write_results(tmp_path / "one", [make_result(seed=0), make_result(method="dualpriv")])
    two = write_results(tmp_path / "two", [make_result(seed=1), make_result(method="nonprivate", epsilon=None)])
    assert build([one, two]).files == build([two, one]).files


def test_a_run_in_both_results_and_runs_counts_once(tmp_path):
    r = make_result()
    results = write_results(tmp_path / "results", [r])
    write_json_atomic(tmp_path / "runs" / r["run_id"] / "result.json", r)
    result = invoke(
        "--results", str(results), "--include-runs", str(tmp_path / "runs"), "--out", str(tmp_path / "board")
    )
    assert result.exit_code == 0 and "1 result(s)" in result.output and "skipped duplicate" in result.output


def test_missing_results_folder_is_a_one_line_error(tmp_path):
    result = invoke("--results", str(tmp_path / "nope"), "--out", str(tmp_path / "board"))
    assert result.exit_code != 0 and "does not exist" in str(result.exception)


def test_canary_trained_runs_are_a_row_of_their_own_and_say_so(tmp_path):
    plain = make_result(seed=0, accuracy=0.7)
    canary = make_result(seed=1, accuracy=0.1)
    canary["dataset"]["n_canaries"] = 50
    assert validation_errors(canary) == []
    rows = aggregate([plain, canary])
    assert sorted(r.utility.mean for r in rows) == [0.1, 0.7]  # a row each: never averaged together
    out = tmp_path / "board"
    assert (
        invoke("--results", str(write_results(tmp_path / "results", [plain, canary])), "--out", str(out)).exit_code == 0
    )
    main, full = tables((out / "README.md").read_text())
    lines = [line for line in full if line.startswith("| dpsgd")]
    assert len(lines) == 2 and sum("with audit canaries in training" in line for line in lines) == 1
    # the compact table has no data column: the canary-trained row says so in its badge
    lines = [line for line in main if line.startswith("| dpsgd")]
    assert len(lines) == 2 and sum(line.startswith("| dpsgd · audit: canaries in training, ") for line in lines) == 1


# -- the systems section: committed `dpbench bench` outputs ------------------------------------
BENCH_FIXTURE = FIXTURES.parent / "bench" / "bench-scienceqa-tiny-llava-cpu.json"  # a real `dpbench bench` output


def write_bench(folder: Path, name: str, changes=lambda b: None) -> Path:
    bench = json.loads(BENCH_FIXTURE.read_text())
    changes(bench)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(bench))
    return folder


def test_bench_outputs_render_per_device_type_with_their_ratios(tmp_path):
    def on_gpu(b):
        b["base"]["device"] = "cuda:0"
        for case in b["cases"]:
            case["memory"] = {"cuda:0": {**case["memory"]["cpu"], "name": "NVIDIA H100", "kind": "cuda-max-allocated"}}

    benches = write_bench(tmp_path / "benchmarks", "cpu.json")
    write_bench(benches, "gpu.json", on_gpu)
    board = build([FIXTURES], [benches])
    readme, page = board.files["README.md"], board.files["index.html"]
    assert readme.index("## Systems benchmark: cpu") < readme.index("## Systems benchmark: cuda")
    assert "| dualpriv | 64 | 16/64 | 639.3 | 0.81× | 65.51 | 0.72× | 3 |" in readme.splitlines()
    assert "| Method | Batch | Visual tokens | Peak memory cuda:0 (MiB) |" in readme
    assert "<h2>Systems benchmark: cuda</h2>" in page and "NVIDIA H100" in page
    assert '<td data-sort="0.81">0.81×</td>' in page  # ratios sort as numbers


def test_an_invalid_or_hostile_bench_file_fails_or_is_escaped(tmp_path):
    def broken(b):
        b["cases"][1]["memory"]["cpu"]["peak_bytes"] = -5
        del b["rounds"]

    bad = write_bench(tmp_path / "bad", "broken.json", broken)
    result = invoke("--results", str(FIXTURES), "--benchmarks", str(bad), "--out", str(tmp_path / "board"), "--check")
    assert result.exit_code == 1
    assert re.search(
        r"broken\.json: \$\.cases\[1\]\.memory\.cpu\.peak_bytes: -5 is less than the minimum", result.output
    )
    assert re.search(r"broken\.json: \$: 'rounds' is a required property", result.output)

    hostile = write_bench(
        tmp_path / "hostile", "evil.json", lambda b: b["cases"][1].update(label=HOSTILE + "|x", method=HOSTILE)
    )
    board = build([FIXTURES], [hostile])
    for text in board.files.values():
        assert HOSTILE not in text
    assert "&lt;script&gt;" in board.files["index.html"]


def test_the_committed_leaderboard_is_current(monkeypatch):
    """CI checks this too; failing here tells a contributor before they push."""
    monkeypatch.chdir(Path(__file__).parents[1])
    result = invoke("--check")
    assert result.exit_code == 0, result.output


def test_frontier_draws_the_non_private_and_zero_shot_lines():
    from dpbench.leaderboard.plots import frontier_data

    private = make_result(accuracy=0.6)
    baseline = make_result(method="nonprivate", epsilon=None, accuracy=0.95)
    zero = private["model"]["zero_shot"]["accuracy"]
    plot = frontier_data(aggregate([private, baseline]), private["spec"]["task"])
    (base_label, base_y), (zero_label, zero_y) = [(b["label"], b["y"]) for b in plot["baselines"]]
    assert base_label.startswith("nonprivate") and base_label.endswith(" (non-private)") and base_y == 0.95
    assert (zero_label, zero_y) == ("zero-shot (pre-trained, no private data)", zero)
    assert [s["points"][0][1] for s in plot["series"]] == [0.6]


def test_only_results_that_differ_by_seed_alone_are_averaged():
    """A LoRA run or another learning rate is another configuration, named in Options."""
    plain = [make_result(seed=s) for s in (0, 1)]
    lora = make_result(seed=0, lora={"r": 8, "alpha": 16, "targets": ["q_proj", "v_proj"]})
    other_lr = make_result(seed=0, **{"training.lr": 3e-3})
    rows = aggregate([*plain, lora, other_lr])
    base = json.loads(options(plain[0]["spec"]) or "{}")  # the fixture's own off-default fields
    by_extra = {frozenset(json.loads(r.method_options or "{}")) - frozenset(base): r for r in rows}
    assert set(by_extra) == {frozenset(), frozenset({"lora"}), frozenset({"training.lr"})}
    assert by_extra[frozenset()].n_seeds == 2 and by_extra[frozenset({"lora"})].n_seeds == 1
    assert json.loads(by_extra[frozenset({"lora"})].method_options)["lora"]["r"] == 8
    readme = render_markdown(rows, 4)
    assert "training.lr=0.003" in readme and 'lora={"alpha": 16.0, "dropout": 0.0, "r": 8' in readme


def whitebox(epsilon_hat: float, accounted: float) -> dict:
    return {
        "m": 1000,
        "included": 500,
        "seed": 0,
        "epsilon_lower_bound": epsilon_hat,
        "guesses": 200,
        "correct": 190,
        "ceiling": 3.9,
        "epsilon_lower_bound_fdp": epsilon_hat * 1.3,
        "ceiling_fdp": 8.1,
        "confidence": 0.95,
        "steps_observed": 150,
        "score": "llr",
        "inserted": "per-example gradient",
        "accounted_epsilon": accounted,
        "violation": epsilon_hat > accounted,
        "note": "n",
    }


def test_a_whitebox_violation_is_shown_prominently_on_both_pages():
    sound, broken = make_result(seed=0), make_result(seed=1)
    sound["audit"]["whitebox"] = whitebox(1.2, sound["privacy"]["epsilon"])
    broken["audit"]["whitebox"] = whitebox(3.5, broken["privacy"]["epsilon"] - 1.0)
    assert validation_errors(sound) == [] and validation_errors(broken) == []
    rows = aggregate([sound, broken])
    assert rows[0].violations == 1 and rows[0].whitebox_eps_hat.mean == pytest.approx(2.35)
    readme = render_markdown(rows, 2)
    assert "> **AUDIT VIOLATION: dpsgd" in readme and "VIOLATION (1)" in readme
    from dpbench.leaderboard.html_page import render_html

    page = render_html(rows, 2)
    assert '<p class="violation" role="alert">AUDIT VIOLATION' in page and '<tr class="violation">' in page
    calm = render_markdown(aggregate([sound]), 1)
    assert "AUDIT VIOLATION" not in calm and "VIOLATION (" not in calm and "| ok |" in calm


def test_a_multi_process_run_is_its_own_row_with_the_highest_ranks_memory():
    one = make_result(seed=0)
    two = make_result(seed=0, **{"training.nproc": 2})
    record = one["systems"]["peak_memory"][0]
    two["systems"]["peak_memory"] = [
        {**record, "rank": 0, "peak_bytes": 100 * MIB},
        {**record, "rank": 1, "peak_bytes": 300 * MIB},
    ]
    assert validation_errors(two) == []
    rows = {r.device: r for r in aggregate([one, two])}
    (multi,) = [d for d in rows if "×2" in d]
    assert rows[multi].peak_memory_mib.mean == 300 and rows[multi].n_seeds == 1
    assert "training.nproc" in rows[multi].method_options and len(rows) == 2


def test_a_benchmarks_extrapolations_are_listed_as_such():
    from dpbench.leaderboard.benchmarks import Benchmark

    extrapolated = {
        "label": "dpsgd",
        "batch_size": 2,
        "device": "cpu",
        "from_layers": [1, 2],
        "per_layer_bytes": 2**20,
        "full_layers": 32,
        "extrapolated_peak_bytes": 40 * 2**20,
        "measured_peak_bytes": None,
    }
    data = {"base": {"model": "m", "task": "t", "device": "cpu", "training": {"steps": 1}}, "cases": [], "rounds": 1}
    notes = Benchmark("b.json", {**data, "extrapolations": [extrapolated]}).notes()
    assert notes == [
        "EXTRAPOLATED, not measured: dpsgd at batch 2, 32 layers, cpu: 40 MiB (a line through layers 1, 2)"
    ]
    measured = {**extrapolated, "measured_peak_bytes": 38 * 2**20}
    assert Benchmark("b.json", {**data, "extrapolations": [measured]}).notes()[0].endswith("full depth: 38 MiB")


def test_the_audit_benchmarks_are_shown_in_the_audit_section(tmp_path):
    """benchmarks/bug_zoo.py's tables reach both pages, each row as written; a file without a table is left out."""
    from dpbench.leaderboard.audit_benchmarks import collect_audit_tables
    from dpbench.leaderboard.html_page import render_html
    from dpbench.leaderboard.render import render_markdown

    (tmp_path / "bug-zoo.md").write_text(
        "# The DP bug zoo (embedded default)\n\nWhat ran.\n\n| fault | flagged |\n|---|---|\n| noise-x0.5 | **yes** |\n"
    )
    (tmp_path / "audit-power.md").write_text("# Power\n\nno table yet\n")
    audits = collect_audit_tables([tmp_path])
    assert [(a.name, a.head, a.rows) for a in audits] == [
        ("bug-zoo.md", ["fault", "flagged"], [["noise-x0.5", "**yes**"]])
    ]
    md, html = render_markdown([], 0, (), audits), render_html([], 0, (), audits)
    assert "## Audit: The DP bug zoo (embedded default)" in md and "noise-x0.5" in md
    assert "<h2>Audit: The DP bug zoo (embedded default)</h2>" in html and "noise-x0.5" in html


def test_a_non_private_row_names_no_privacy_option():
    """Accounting choices mean nothing for a run that neither calibrates nor accounts."""
    from dpbench.leaderboard.aggregate import options
    from dpbench.spec import RunSpec

    rdp = {"privacy.accountant": "rdp", "training.steps": 7}
    assert options(RunSpec(method="nonprivate").replace(**rdp).to_dict()) == '{"training.steps": 7}'
    assert '"privacy.accountant": "rdp"' in options(RunSpec(method="dpsgd").replace(**rdp).to_dict())


def test_the_strongest_audit_is_the_highest_bound_and_named_only_above_zero():
    r = make_result()
    r["audit"]["whitebox"] = whitebox(1.2, r["privacy"]["epsilon"])
    (row,) = aggregate([r])
    assert (row.strongest_eps_hat.audit, row.strongest_eps_hat.stat.mean) == ("white-box", 1.2)
    r["audit"]["whitebox"] = whitebox(0.1, r["privacy"]["epsilon"])  # below the zlib attack's 0.35
    (row,) = aggregate([r])
    assert (row.strongest_eps_hat.audit, row.strongest_eps_hat.stat.mean) == ("MIA", 0.35)
    for attack in r["audit"]["attacks"].values():
        attack["epsilon_lower_bound"] = 0.0
    r["audit"]["whitebox"] = whitebox(0.0, r["privacy"]["epsilon"])
    (row,) = aggregate([r])
    assert row.strongest_eps_hat.audit is None and row.strongest_eps_hat.stat.mean == 0  # a tie of zeros: none named
    r["audit"] = None  # no audit ran: nothing to name, not a zero
    assert validation_errors(r) == [] and aggregate([r])[0].strongest_eps_hat is None


def test_the_main_table_moves_audit_settings_to_a_badge_and_the_details_keep_every_column():
    from dpbench.leaderboard.columns import COLUMNS, audit_badge
    from dpbench.leaderboard.html_page import render_html
    from dpbench.leaderboard.render import main_columns, table_columns

    audited = make_result(**{"audit.canaries": 200, "audit.references": 0, "training.steps": 7})
    audited["dataset"]["n_canaries"] = 200
    rows = aggregate([audited, make_result(seed=1, model="other-model")])
    row = next(r for r in rows if r.model == "tiny-llava")
    assert "audit." not in row.training_options and "training.steps" in row.training_options
    assert audit_badge(row).startswith("audit: attacks loss, zlib, mink, mink++, reference, image, canaries 200 in")
    # the model differs between the rows, so the main table names it; the device does not
    assert [c.title for c in main_columns(rows)][:3] == ["Method", "Options", "Model"]
    assert "Device" not in [c.title for c in main_columns(rows)] and len(main_columns(rows)) < 12
    page = render_html(rows, 2)
    main, full = page.split('<div class="wide main-table">')[1].split('<div class="wide full-table">')
    assert '<span class="badge">audit: attacks loss' in main and "audit.canaries" not in main
    assert "audit.canaries=200" in full and "<details><summary>All 22 columns: adds " in main
    for column in table_columns(rows):
        assert f'<th scope="col">{column.header}</th>' in full, column.title
    # every column but the model source, which the rows share and the note above says once
    assert {c.attr for c in table_columns(rows)} == {c.attr for c in COLUMNS} - {"model_source"}


def test_a_plot_with_nothing_to_show_is_not_drawn_and_the_page_says_why():
    from dpbench.leaderboard import plots
    from dpbench.leaderboard.html_page import render_html

    quiet = make_result()
    for attack in quiet["audit"]["attacks"].values():
        attack["epsilon_lower_bound"] = 0.0
    rows = aggregate([quiet])
    audit = plots.audit_data(rows, "scienceqa")
    assert plots.n_points(audit) == 1 and "every point would lie on the ε axis" in plots.empty_reason(audit)
    with pytest.raises(ValueError, match="not drawing"):
        plots.draw(audit)
    none = plots.audit_data(aggregate([make_result(method="nonprivate", epsilon=None)]), "scienceqa")
    assert plots.n_points(none) == 0 and "no private configuration ran an audit" in plots.empty_reason(none)
    with pytest.raises(ValueError):
        plots.draw(none)
    assert plots.draw(plots.frontier_data(rows, "scienceqa")).startswith(b"\x89PNG")
    page = render_html(rows, 1)
    assert page.count("<img ") == 2 and 'alt="scienceqa: empirical' not in page  # frontier and systems only
    assert '<p class="note no-plot">No plot “scienceqa: empirical ε̂ against accounted ε”: every audit' in page


def test_a_record_from_before_a_field_existed_is_read_as_it_meant_then():
    """A result without `audit.members` scored every member: it is not averaged with today's
    default (500), and its row names the difference."""
    new = make_result(seed=0)
    old = make_result(seed=1)
    del old["spec"]["audit"]["members"]
    rows = aggregate([new, old])
    assert len(rows) == 2 and sorted(r.n_seeds for r in rows) == [1, 1]
    assert any('"audit.members": null' in (r.method_options or "") for r in rows)
    assert any("every member" in audit_badge(r) for r in rows) and not all(
        "every member" in audit_badge(r) for r in rows
    )
