"""The leaderboard's compute-matched view: pass counts per method, and utility read at DP-SGD's
budget along a method's configurations that differ only in steps."""

import dataclasses
import json

import pytest

from dpbench.leaderboard import compute
from dpbench.leaderboard.aggregate import Row, Stat, train_compute
from dpbench.registry import METHODS


def row(method, utility, compute_units, options=None, eps=8.0, source="embedded-sample"):
    fields = {f.name: None for f in dataclasses.fields(Row)}
    fields.update(
        task="scienceqa",
        method=method,
        method_options=json.dumps(options, sort_keys=True) if options else "",
        model="tiny-llava",
        target_epsilon=eps,
        dataset_source=source,
        model_source="embedded-pretrained",
        weights="abc",
        device="CPU",
        device_type="cpu",
        primary_metric="accuracy",
        higher_is_better=True,
        utility=Stat(utility, None, 1),
        train_compute=Stat(compute_units, None, 1),
        seeds=(0,),
        run_ids=("r",),
    )
    return Row(**fields)


def test_passes_per_example_follow_each_methods_algorithm():
    assert METHODS.get("dpsgd")().passes_per_example() == (1, 1)
    assert METHODS.get("dpsgd")(clipping="ghost").passes_per_example() == (1, 2)
    assert METHODS.get("dualpriv")(clipping="ghost").passes_per_example() == (1, 2)
    assert METHODS.get("dpzo")(directions=3).passes_per_example() == (6, 0)
    result = {
        "spec": {"method": "dpzo", "method_options": {"directions": 2}},
        "systems": {"train": {"samples_per_s": 100.0, "wall_s": 3.0}},
    }
    assert train_compute(result) == pytest.approx(300 * 4)  # 300 examples x 4 forwards
    assert train_compute({**result, "spec": {"method": "not-installed", "method_options": {}}}) is None


def test_read_at_interpolates_between_the_nearest_budgets_and_never_beyond():
    points = [(100.0, 0.70), (200.0, 0.80), (400.0, 0.84)]
    assert compute.read_at(points, 150.0) == pytest.approx(0.75)
    assert compute.read_at(points, 300.0) == pytest.approx(0.82)
    assert compute.read_at(points, 50.0) is None and compute.read_at(points, 500.0) is None
    assert compute.read_at([(98.0, 0.7)], 100.0) == 0.7  # one configuration within 5% of the budget
    assert compute.read_at([(90.0, 0.7)], 100.0) is None


def test_a_method_is_read_at_the_reference_budget_of_its_own_setting_only():
    rows = [
        row("dpsgd", 0.90, 3000.0),
        row("dpzo", 0.75, 2000.0),
        row("dpzo", 0.81, 4000.0, options={"training.steps": 300}),
        row("dpzo", 0.60, 3000.0, options={"training.steps": 225}, eps=1.0),  # no dpsgd at ε = 1
        row("dpsgd", 0.88, 3000.0, options={"audit.canaries": 200}, source="embedded-sample+canaries"),
        row("dpsgd", 0.70, 6000.0, options={"clipping": "ghost"}),  # not the reference: its own option
    ]
    by = {(m.row.method, m.row.method_options, m.row.target_epsilon): m for m in compute.matched(rows)}
    assert (("dpzo", '{"training.steps": 225}', 1.0)) not in by
    short = by[("dpzo", "", 8.0)]
    assert short.compute_ratio == pytest.approx(2 / 3)
    assert short.at_compute == pytest.approx(0.78)  # halfway between 2000 and 4000, at dpsgd's 3000
    assert by[("dpzo", '{"training.steps": 300}', 8.0)].at_compute == pytest.approx(0.78)  # the same line
    canaries = by[("dpsgd", '{"audit.canaries": 200}', 8.0)]
    assert canaries.compute_ratio == 1.0 and canaries.at_compute == 0.88  # its own reference, not the plain one
    ghost = by[("dpsgd", '{"clipping": "ghost"}', 8.0)]
    assert ghost.compute_ratio == 2.0 and ghost.at_compute is None  # twice the budget, nothing below it
    head, cells = compute.table(rows)
    assert len(head) == len(cells[0]) and any(c[0] == "dpzo" and c[-1] == "0.780" for c in cells)
    assert not any("wall" in h.lower() for h in head)  # wall times of different sessions are not compared
