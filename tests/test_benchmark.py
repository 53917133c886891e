"""`dpbench bench`: parsing method entries, planning cases, interleaving, medians and ratios,
rendering; one subprocess smoke run on a tiny random checkpoint."""

import json

import pytest

from dpbench.benchmark import (
    BASELINE,
    DEFAULT_METHODS,
    Case,
    MeasurementFailed,
    MethodEntry,
    case_spec,
    extrapolate,
    parse_method_entry,
    parse_methods,
    parse_numbers,
    plan_cases,
    run_rounds,
    summarise,
)
from dpbench.benchmark_report import markdown, plot_png
from dpbench.errors import DpbenchError


# -- parsing ------------------------------------------------------------------------------------
def test_method_entries_parse_typed_options_and_label_back_to_their_text():
    e = parse_method_entry("dualpriv:clipping=per-sample:keep_ratio=0.5:update_keep=null:fused_noise=true")
    assert e.name == "dualpriv"
    assert dict(e.options) == {"clipping": "per-sample", "keep_ratio": 0.5, "update_keep": None, "fused_noise": True}
    assert e.label == "dualpriv:clipping=per-sample:keep_ratio=0.5:update_keep=null:fused_noise=true"
    assert parse_method_entry(e.label) == e
    assert parse_method_entry(" dpsgd ") == MethodEntry("dpsgd")


@pytest.mark.parametrize("text", [":clipping=ghost", "dpsgd:clipping", "dpsgd:=ghost", "dpsgd:a=1:a=2", "dpsgd:a=[1"])
def test_bad_method_entries_fail(text):
    with pytest.raises(DpbenchError):
        parse_method_entry(text)


def test_method_lists_put_the_baseline_first_and_reject_repeats():
    default = parse_methods(DEFAULT_METHODS)
    assert [e.label for e in default] == ["nonprivate", "dpsgd", "dpsgd:clipping=ghost", "dpzo", "dualpriv"]
    assert parse_methods("dpsgd,dualpriv")[0] == BASELINE  # added: every ratio needs it
    assert [e.label for e in parse_methods("dpsgd,nonprivate")] == ["dpsgd", "nonprivate"]
    for bad in ("", " , ", "dpsgd,dpsgd", "dpsgd:clipping=ghost,dpsgd:clipping=ghost"):
        with pytest.raises(DpbenchError):
            parse_methods(bad)


def test_number_lists():
    assert parse_numbers("16, 32,64", "--batch-sizes", int, lambda b: b >= 1, "positive integers") == [16, 32, 64]
    for bad in ("16,x", "0,16", "16,16", "", "1.5"):
        with pytest.raises(DpbenchError):
            parse_numbers(bad, "--batch-sizes", int, lambda b: b >= 1, "positive integers")


def test_keep_ratios_apply_only_to_methods_that_prune_and_do_not_set_their_own():
    entries = parse_methods("dpsgd,dualpriv,dualpriv:keep_ratio=0.1")
    prunes = lambda e: e.name == "dualpriv"  # noqa: E731
    cases = plan_cases(entries, [8, 16], [1.0, 0.5], prunes=prunes)
    assert [(c.label, c.batch_size) for c in cases] == [
        ("nonprivate", 8),
        ("dpsgd", 8),
        ("dualpriv:keep_ratio=1", 8),
        ("dualpriv:keep_ratio=0.5", 8),
        ("dualpriv:keep_ratio=0.1", 8),
        ("nonprivate", 16),
        ("dpsgd", 16),
        ("dualpriv:keep_ratio=1", 16),
        ("dualpriv:keep_ratio=0.5", 16),
        ("dualpriv:keep_ratio=0.1", 16),
    ]
    assert cases[3].options == {"keep_ratio": 0.5}
    assert [c.label for c in plan_cases(entries, [8], None, prunes=prunes)] == [e.label for e in entries]


def test_real_methods_say_whether_they_prune():
    cases = plan_cases(parse_methods("dpsgd:clipping=ghost,dualpriv"), [8], [0.5])
    assert [c.label for c in cases] == ["nonprivate", "dpsgd:clipping=ghost", "dualpriv:keep_ratio=0.5"]
    with pytest.raises(DpbenchError):  # bad options fail while planning, before any run
        plan_cases(parse_methods("dpsgd:clipping=flat"), [8], None)


def test_case_specs_carry_options_and_default_the_physical_batch_to_the_batch():
    base = {
        "model": "m",
        "task": "scienceqa",
        "device": "cpu",
        "privacy": {"epsilon": 3.0},
        "training": {"steps": 2, "seed": 1, "physical_batch_size": None},
    }
    spec = case_spec(base, Case(parse_method_entry("dualpriv:clipping=ghost"), 48, 0.5))
    assert spec.method == "dualpriv" and spec.method_options == {"clipping": "ghost"}
    assert (spec.token_pruning.strategy, spec.token_pruning.keep_ratio) == ("random", 0.5)  # the method's, at 0.5
    assert (spec.training.batch_size, spec.training.physical_batch_size, spec.training.steps) == (48, 48, 2)
    assert spec.privacy.epsilon == 3.0 and spec.attacks == ()
    base["training"]["physical_batch_size"] = 8
    assert case_spec(base, Case(BASELINE, 48)).training.physical_batch_size == 8


# -- running and summarising ---------------------------------------------------------------------
def systems(cpu_bytes, samples_per_s, cuda_bytes=None, kept=64, breakdown=None):
    memory = [{"device": "cpu", "name": "CPU", "kind": "cpu-rss-above-baseline", "peak_bytes": cpu_bytes}]
    if cuda_bytes is not None:
        memory.append({"device": "cuda:0", "name": "GPU", "kind": "cuda-max-allocated", "peak_bytes": cuda_bytes})
    return {
        "steps": 1,
        "peak_memory": memory,
        "train": {"wall_s": 1.0, "samples_per_s": samples_per_s, "tokens_per_s": 10 * samples_per_s},
        "visual_tokens": {"before": 64, "after": kept},
        **({"memory_breakdown": [breakdown]} if breakdown else {}),
    }


def test_rounds_interleave_cases_and_rotate_the_first():
    cases = [Case(BASELINE, 8), Case(MethodEntry("dpsgd"), 8), Case(MethodEntry("dpzo"), 8)]
    calls = []

    def worker(spec):
        calls.append(spec)
        if spec == "dpzo" and len(calls) == 3:
            raise MeasurementFailed("exit status 1: boom")
        return systems(1, 1.0)

    out = run_rounds(cases, ["nonprivate", "dpsgd", "dpzo"], 3, worker=worker)
    assert calls == ["nonprivate", "dpsgd", "dpzo", "dpsgd", "dpzo", "nonprivate", "dpzo", "nonprivate", "dpsgd"]
    assert [(m["case"], m["round"]) for m in out][:4] == [(0, 0), (1, 0), (2, 0), (1, 1)]
    assert out[2]["error"] == "exit status 1: boom" and out[2]["systems"] is None


def test_summary_takes_medians_and_divides_by_nonprivate_at_the_same_batch_size():
    cases = [Case(BASELINE, 8), Case(MethodEntry("dpsgd"), 8), Case(BASELINE, 16), Case(MethodEntry("dpsgd"), 16)]
    runs = {
        0: [systems(100, 10.0, 1000), systems(300, 30.0, 3000), systems(200, 20.0, 2000)],
        1: [systems(600, 5.0, 9000), systems(400, 4.0, 5000), systems(1000, 2.0, 4000)],
        2: [systems(500, 8.0)],
        3: [systems(750, 2.0, kept=16), None],
    }  # None: a failed run, left out of the medians
    measurements = [
        {"case": i, "round": r, "systems": s, "error": None if s else "failed"}
        for i, ss in runs.items()
        for r, s in enumerate(ss)
    ]
    rows = summarise(cases, measurements)
    assert rows[0]["memory"]["cpu"]["peak_bytes"] == 200 and rows[0]["memory"]["cpu"]["ratio"] == 1.0
    assert rows[0]["samples_per_s"] == 20.0 and rows[0]["throughput_ratio"] == 1.0
    assert rows[1]["memory"]["cpu"]["peak_bytes"] == 600 and rows[1]["memory"]["cpu"]["ratio"] == 3.0
    assert rows[1]["memory"]["cuda:0"] == {
        "name": "GPU",
        "kind": "cuda-max-allocated",
        "peak_bytes": 5000,
        "ratio": 2.5,
    }
    assert rows[1]["samples_per_s"] == 4.0 and rows[1]["throughput_ratio"] == pytest.approx(0.2)
    assert rows[3]["memory"]["cpu"]["ratio"] == 1.5 and rows[3]["throughput_ratio"] == 0.25  # vs B=16's baseline
    assert (rows[3]["runs"], rows[3]["failed"]) == (1, 1) and rows[3]["visual_tokens"]["after"] == 16
    assert "cuda:0" not in rows[2]["memory"]


def result_of(rows):
    return {
        "base": {
            "model": "tiny",
            "task": "scienceqa",
            "device": "cuda",
            "privacy": {"epsilon": 8.0},
            "training": {"steps": 10},
        },
        "rounds": 3,
        "created": "2025-01-01T00:00:00+00:00",
        "cases": rows,
    }


def test_markdown_has_a_row_per_case_and_columns_per_device():
    cases = [Case(BASELINE, 8), Case(parse_method_entry("dpsgd:clipping=ghost"), 8)]
    measurements = [
        {"case": 0, "round": 0, "systems": systems(2 * 2**20, 10.0, 4 * 2**20), "error": None},
        {"case": 1, "round": 0, "systems": systems(3 * 2**20, 4.0, kept=16), "error": None},
        {"case": 1, "round": 1, "systems": None, "error": "exit status 1"},
    ]
    text = markdown(result_of(summarise(cases, measurements)))
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| Method"))
    assert header == (
        "| Method | Batch | Visual tokens | Peak memory cpu (MiB) | × nonprivate | "
        "Peak memory cuda:0 (MiB) | × nonprivate | Train samples/s | × nonprivate | Runs |"
    )
    assert "| `nonprivate` | 8 | 64/64 | 2.0 | 1.00× | 4.0 | 1.00× | 10.00 | 1.00× | 1 |" in lines
    assert "| `dpsgd:clipping=ghost` | 8 | 16/64 | 3.0 | 1.50× | — | — | 4.00 | 0.40× | 1 (1 failed) |" in lines
    assert any(line.startswith("- cuda:0: GPU; torch's max allocated") for line in lines)


def test_depths_are_compared_with_nonprivate_at_the_same_depth_and_extrapolated_to_full_depth():
    entries = [BASELINE, MethodEntry("dpsgd")]
    cases = plan_cases(entries, [4], None, prunes=lambda e: False, layers=[1, 2, 3, 4])
    assert [(c.entry.name, c.layers) for c in cases[:4]] == [
        ("nonprivate", 1),
        ("dpsgd", 1),
        ("nonprivate", 2),
        ("dpsgd", 2),
    ]
    assert case_spec({"model": "smolvlm-256m-random", "training": {}}, cases[3]).model_layers == 2
    # memory = 100 + 50 per layer (nonprivate), 300 + 80 per layer (dpsgd); full depth 4 measured off the line
    mib = 2**20
    measured = {("nonprivate", d): (100 + 50 * d) * mib for d in (1, 2, 3)} | {
        ("dpsgd", d): (300 + 80 * d) * mib for d in (1, 2, 3)
    }
    measured |= {("nonprivate", 4): 310 * mib, ("dpsgd", 4): 600 * mib}
    measurements = [
        {"case": i, "round": 0, "systems": systems(measured[(c.entry.name, c.layers)], 1.0), "error": None}
        for i, c in enumerate(cases)
    ]
    rows = summarise(cases, measurements)
    assert rows[3]["memory"]["cpu"]["ratio"] == pytest.approx(460 / 200)  # dpsgd at 2 over nonprivate at 2
    by_label = {e["label"]: e for e in extrapolate(rows, full_depth=4)}
    assert by_label["dpsgd"]["from_layers"] == [1, 2, 3]  # the full-depth figure is not fitted
    assert by_label["dpsgd"]["per_layer_bytes"] == pytest.approx(80 * mib)
    assert by_label["dpsgd"]["extrapolated_peak_bytes"] == pytest.approx(620 * mib)
    assert by_label["dpsgd"]["measured_peak_bytes"] == 600 * mib
    assert extrapolate(rows, full_depth=30)[0]["measured_peak_bytes"] is None
    assert extrapolate([r for r in rows if r["layers"] == 1], full_depth=4) == []  # one depth: no line
    result = {**result_of(rows), "extrapolations": list(by_label.values())}
    text = markdown(result)
    assert "EXTRAPOLATED" in text and "| `dpsgd` | 4 | cpu | 1, 2, 3 | 80.0 | 620.0 | 600.0 |" in text
    assert "| `dpsgd` | 4 | 2 | 64/64 |" in text  # the depth column


def test_plot_is_a_png():
    cases = [Case(BASELINE, 8), Case(MethodEntry("dpsgd"), 8)]
    measurements = [{"case": i, "round": 0, "systems": systems(100 * (i + 1), 1.0), "error": None} for i in (0, 1)]
    assert plot_png(result_of(summarise(cases, measurements))).startswith(b"\x89PNG")


# -- where the peak memory goes ------------------------------------------------------------------
def breakdown_errors(breakdown):
    """What the result schema says against one memory breakdown."""
    import jsonschema

    from dpbench.schemas import schema

    part = {"$defs": schema("result")["$defs"], "$ref": "#/$defs/memory_breakdown"}
    return [e.message for e in jsonschema.Draft202012Validator(part).iter_errors(breakdown)]


def stepped_tiny_adam():
    """Two Adam steps on a two-layer net (its first weight frozen) inside a breakdown, one outside."""
    import torch

    from dpbench.memory_breakdown import MemoryBreakdown

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Linear(4, 2))
    model[0].weight.requires_grad_(False)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad])

    def step():
        model(torch.randn(3, 8)).sum().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with MemoryBreakdown(model, "cpu") as parts:
        step()
        step()
    step()  # read by no breakdown
    return parts


def test_the_breakdown_derives_each_part_from_tensor_sizes_and_the_rest_from_the_peak():
    parts = stepped_tiny_adam()
    weights, trained = 4 * (8 * 4 + 4 + 4 * 2 + 2), 4 * (4 + 4 * 2 + 2)
    state = 2 * trained + 4 * 3  # two moments, and a step counter per tensor
    cpu = parts.breakdown({"device": "cpu", "kind": "cpu-rss-above-baseline", "peak_bytes": 1000})
    c = cpu["components"]
    assert cpu["peak"] == {"bytes": 1000, "how": "measured", "kind": "cpu-rss-above-baseline"}
    assert c["weights"]["bytes"] == weights and not c["weights"]["in_peak"]  # resident before: in the baseline
    assert c["trained_gradients"]["bytes"] == trained and c["per_example_gradients"]["bytes"] == 0
    assert c["optimizer_state"]["bytes"] == state
    assert c["activations_and_rest"]["bytes"] == 1000 - trained - state
    assert all(p["how"] == "derived" for p in c.values())
    gpu = parts.breakdown({"device": "cuda:0", "kind": "cuda-max-allocated", "peak_bytes": 1000})
    assert gpu["components"]["weights"]["in_peak"]  # torch's allocated bytes count the weights
    assert gpu["components"]["activations_and_rest"]["bytes"] == 1000 - weights - trained - state
    over = parts.breakdown({"device": "cpu", "kind": "cpu-rss-above-baseline", "peak_bytes": 10})
    assert over["components"]["activations_and_rest"]["bytes"] is None  # never a negative figure
    assert "not derived" in over["components"]["activations_and_rest"]["source"]
    assert all(breakdown_errors(b) == [] for b in (cpu, gpu, over))


def test_a_training_without_an_optimizer_step_leaves_its_parts_unknown():
    import torch

    from dpbench.memory_breakdown import MemoryBreakdown

    with MemoryBreakdown(torch.nn.Linear(2, 2), "cpu") as parts:
        pass
    b = parts.breakdown({"device": "cpu", "kind": "cpu-rss-above-baseline", "peak_bytes": 1000})["components"]
    assert b["weights"]["bytes"] == 24
    assert all(b[name]["bytes"] is None for name in b if name != "weights")
    assert "no torch optimizer" in b["optimizer_state"]["source"]
    assert "counted no forward" in b["saved_activations"]["source"]


def test_saved_activations_count_each_tensor_autograd_saves_once_and_not_the_weights():
    import torch

    from dpbench.memory_breakdown import MemoryBreakdown, SavedTensors, note_saved_activations

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    x = torch.randn(3, 8)
    # the first Linear saves its input x (3×8) for its weight's gradient; ReLU saves its output
    # (3×16), which the second Linear saves again as its input (one storage: counted once); both
    # Linears' weights (and their transposes, views of them) are the weights' part, not counted
    expected = 4 * (3 * 8 + 3 * 16)
    with SavedTensors(model, "cpu") as saved:
        out = model(x)
    assert saved.bytes == expected
    out.sum().backward()  # what the hooks saved still serves backward
    assert model[0].weight.grad is not None and model[0].weight.grad.abs().sum() > 0
    hooked = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model(x).sum().backward()
    assert all(torch.equal(a, p.grad) for a, p in zip(hooked, model.parameters()))  # the same gradients, bit for bit
    with SavedTensors(model, "cpu"):  # hooks switch off autograd's in-place check: theirs must stand in
        h = model[0](x)
        y = h * h  # saves h
    h.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an in-place operation"):
        y.sum().backward()
    with torch.autocast("cpu", dtype=torch.bfloat16), SavedTensors(model, "cpu") as half:
        model(x)
    assert half.bytes == 2 * (3 * 8 + 3 * 16)  # bf16 casts of x and ReLU's output; autocast's weight copies not
    with SavedTensors(model, "cuda:0") as elsewhere:  # another device's breakdown counts none of these
        model(x)
    assert elsewhere.bytes == 0

    assert note_saved_activations() is note_saved_activations()  # outside a breakdown: one inert context
    with MemoryBreakdown(model, "cpu") as parts:
        for batch in (x, torch.randn(1, 8)):  # then a smaller physical batch: the largest stays
            with note_saved_activations():  # around the forward, as the training loops have it
                loss = model(batch).sum()
            loss.backward()
    part = parts.breakdown({"device": "cpu", "kind": "cpu-rss-above-baseline", "peak_bytes": 1000})["components"]
    assert part["saved_activations"]["bytes"] == expected and part["saved_activations"]["how"] == "derived"
    assert "saved_tensors_hooks" in part["saved_activations"]["source"]


TINY_PEAK = {"device": "cpu", "kind": "cpu-rss-above-baseline", "peak_bytes": 2**40}


def tiny_breakdown(model, examples, method, physical, *, batch, steps=1, pruning=None):
    """A short training of `method` on the tiny model inside a memory breakdown: its components."""
    from dpbench.memory_breakdown import MemoryBreakdown
    from dpbench.methods.base import METHODS
    from dpbench.models.token_pruning import install_token_pruning
    from dpbench.spec import RunSpec

    spec = RunSpec().replace(
        **{
            "training.steps": steps,
            "training.batch_size": batch,
            "training.physical_batch_size": physical,
            "training.lr": 1e-9,
            "privacy.epsilon": 4.0,
            "privacy.accountant": "rdp",  # calibrates in milliseconds
            "audit.gradient_canaries": 0,
        }
    )
    model.set_trainable(["projector", "language_model"])
    pruner = install_token_pruning(model, pruning) if pruning is not None else None
    m = METHODS.get(method)()
    m.prepare(model)
    try:
        with MemoryBreakdown(model.model, "cpu") as parts:
            m.train(model, examples, spec, 1e-3)
    finally:
        if pruner is not None:
            pruner.remove()
    return parts.breakdown(TINY_PEAK)["components"]


@pytest.mark.parametrize("method", ["nonprivate", "dpsgd"])
def test_saved_activations_grow_with_the_physical_batch(fresh_tiny_model, digit_examples, method):
    model = fresh_tiny_model()
    # DP-SGD's logical batches are Poisson draws (rate 8/12): two steps fill a physical batch of 4
    batch, steps = (4, 1) if method == "nonprivate" else (8, 2)
    parts = {p: tiny_breakdown(model, digit_examples, method, p, batch=batch, steps=steps) for p in (2, 4)}
    saved = {p: c["saved_activations"] for p, c in parts.items()}
    assert all(s["bytes"] > 0 and "saved_tensors_hooks" in s["source"] for s in saved.values())
    assert 1.6 <= saved[4]["bytes"] / saved[2]["bytes"] <= 2.4
    c = parts[4]  # the remainder is as before: the saved activations are a share of it, not subtracted
    beside = sum(c[k]["bytes"] for k in ("trained_gradients", "per_example_gradients", "optimizer_state"))
    assert c["activations_and_rest"]["bytes"] == TINY_PEAK["peak_bytes"] - beside
    peak = {"bytes": TINY_PEAK["peak_bytes"], "how": "measured", "kind": TINY_PEAK["kind"]}
    assert breakdown_errors({"device": "cpu", "peak": peak, "components": c}) == []


def test_keeping_fewer_visual_tokens_saves_fewer_activations(fresh_tiny_model, digit_examples):
    from dpbench.models.token_pruning import TokenPruning

    model = fresh_tiny_model()
    saved = {
        keep: tiny_breakdown(model, digit_examples, "dualpriv", 4, batch=8, pruning=TokenPruning("random", keep))[
            "saved_activations"
        ]["bytes"]
        for keep in (0.25, 1.0)
    }
    assert 0 < saved[0.25] < saved[1.0]


def test_dpzo_saves_no_activations_for_a_backward_it_does_not_run(fresh_tiny_model, digit_examples):
    saved = tiny_breakdown(fresh_tiny_model(), digit_examples, "dpzo", 4, batch=8)["saved_activations"]
    assert saved["bytes"] == 0 and saved["source"].startswith("none") and "no_grad" in saved["source"]


@pytest.mark.slow
def test_a_dp_measurement_records_per_example_gradients_in_its_breakdown(checkpoint):
    from dpbench.benchmark_worker import train_systems
    from dpbench.spec import RunSpec

    spec = RunSpec.from_dict(
        {
            "method": "dpsgd",
            "model": str(checkpoint),
            "privacy": {"accountant": "rdp"},  # calibrates in milliseconds
            "training": {"steps": 1, "batch_size": 8, "n_train": 16},
            "audit": {"gradient_canaries": 0},
            "attacks": [],
        }
    )
    (b,) = train_systems(spec)["memory_breakdown"]
    c = b["components"]
    assert b["device"] == "cpu" and b["peak"]["how"] == "measured" and breakdown_errors(b) == []
    grads, per_example, state = (
        c[k]["bytes"] for k in ("trained_gradients", "per_example_gradients", "optimizer_state")
    )
    assert per_example > 0 and "grad_sample" in c["per_example_gradients"]["source"]
    assert 0 < state - grads < 4 * 1000  # .grad and the clipped sum; two moments and a step counter per tensor
    assert c["weights"]["bytes"] >= grads / 2 and not c["weights"]["in_peak"]
    rest = c["activations_and_rest"]["bytes"]
    assert rest is None or rest == b["peak"]["bytes"] - grads - per_example - state
    assert c["saved_activations"]["bytes"] > 0 and "saved_tensors_hooks" in c["saved_activations"]["source"]


@pytest.mark.slow
@pytest.mark.parametrize("clipping", ["per-sample", "ghost"])
def test_per_example_memory_is_read_whole_with_the_audit_block_and_physical_batches(checkpoint, clipping):
    """The default run's setting: gradient canaries on the audit block (they replace the per-example
    gradients before the step) and logical batches split into physical ones. Per-sample clipping:
    the largest physical batch's per-example gradients, exactly physical batch × trained bytes."""
    from dpbench.benchmark_worker import train_systems
    from dpbench.spec import RunSpec

    spec = RunSpec.from_dict(
        {
            "method": "dpsgd",
            "model": str(checkpoint),
            "method_options": {"clipping": clipping},
            "privacy": {"accountant": "rdp"},
            "training": {"steps": 2, "batch_size": 8, "physical_batch_size": 2, "n_train": 16},
            "audit": {"gradient_canaries": 100},
            "attacks": [],
        }
    )
    (b,) = train_systems(spec)["memory_breakdown"]
    per_example = b["components"]["per_example_gradients"]
    if clipping == "ghost":
        assert per_example["bytes"] > 0 and "_norm_sample" in per_example["source"]
        return
    from dpbench.models.loading import load_model

    model = load_model(str(checkpoint), "cpu")
    model.set_trainable(spec.training.trainable.split(","))
    trained = sum(p.nbytes for p in model.model.parameters() if p.requires_grad)
    assert per_example["bytes"] == 2 * trained and "grad_sample" in per_example["source"]


def breakdown_of(peak, rest):
    part = lambda n, in_peak=True, source="s": {"bytes": n, "how": "derived", "in_peak": in_peak, "source": source}  # noqa: E731
    return {
        "device": "cpu",
        "peak": {"bytes": peak, "how": "measured", "kind": "cpu-rss-above-baseline"},
        "components": {
            "weights": part(100 * 2**20, False),
            "trained_gradients": part(2**20),
            "per_example_gradients": part(0, source="none held at the optimizer step"),
            "optimizer_state": part(2 * 2**20),
            "activations_and_rest": part(rest, source="the peak less" if rest is not None else "not derived"),
        },
    }


def test_bench_reports_the_median_breakdown_in_json_markdown_and_the_plot():
    from dpbench.benchmark_report import plot_png
    from dpbench.schemas import validation_errors
    from dpbench.systems import environment

    mib = 2**20
    cases = [Case(BASELINE, 8), Case(MethodEntry("dpsgd"), 8)]
    runs = [(0, 4, 1), (1, 8, 5), (1, 6, None), (1, 7, 3)]  # case, peak, rest (MiB); None: not derived
    measurements = [
        {
            "case": i,
            "round": r,
            "systems": systems(p * mib, 1.0, breakdown=breakdown_of(p * mib, x and x * mib)),
            "error": None,
        }
        for r, (i, p, x) in enumerate(runs)
    ]
    rows = summarise(cases, measurements)
    b = rows[1]["memory_breakdown"]
    assert b["peak"]["bytes"] == 7 * mib and b["components"]["activations_and_rest"]["bytes"] == 4 * mib
    assert b["components"]["activations_and_rest"]["source"] == "the peak less"  # from a run that had the figure
    result = {
        **result_of(rows),
        "kind": "dpbench-bench",
        "environment": environment("cpu"),
        "measurements": measurements,
        "extrapolations": [],
    }
    assert validation_errors(result, "bench") == []
    lines = markdown(result).splitlines()
    assert "## Where the peak memory goes (cpu, MiB)" in lines
    assert (
        "| Method | Batch | Peak, measured | Weights, derived | Trained gradients, derived | "
        "Per-example gradients, derived | Optimizer state, derived | Activations and rest, derived |"
    ) in lines
    assert "| `dpsgd` | 8 | 7.0 | 100.0* | 1.0 | 0.0 | 2.0 | 4.0 |" in lines
    assert "- Per-example gradients: none held at the optimizer step." in lines
    assert plot_png(result).startswith(b"\x89PNG")
    before = summarise(cases, [{**m, "systems": systems(mib, 1.0)} for m in measurements])  # outputs without one
    assert before[1]["memory_breakdown"] is None and "Where the peak" not in markdown(result_of(before))


def test_bench_lists_saved_activations_as_a_share_of_the_rest_beside_older_breakdowns_without_them():
    from dpbench.schemas import validation_errors
    from dpbench.systems import environment

    mib = 2**20
    cases = [Case(BASELINE, 8), Case(MethodEntry("dpsgd"), 8)]
    new = breakdown_of(8 * mib, 4 * mib)
    new["components"]["saved_activations"] = {
        "bytes": 3 * mib,
        "how": "derived",
        "in_peak": True,
        "source": "autograd's saved tensors",
    }
    older = breakdown_of(6 * mib, 2 * mib)  # recorded before the saved activations were counted
    measurements = [
        {"case": 0, "round": 0, "systems": systems(6 * mib, 1.0, breakdown=older), "error": None},
        {"case": 1, "round": 0, "systems": systems(8 * mib, 1.0, breakdown=new), "error": None},
    ]
    rows = summarise(cases, measurements)
    assert "saved_activations" not in rows[0]["memory_breakdown"]["components"]
    assert rows[1]["memory_breakdown"]["components"]["saved_activations"]["bytes"] == 3 * mib
    result = {
        **result_of(rows),
        "kind": "dpbench-bench",
        "environment": environment("cpu"),
        "measurements": measurements,
        "extrapolations": [],
    }
    assert validation_errors(result, "bench") == []  # with the part, and without it
    lines = markdown(result).splitlines()
    assert (
        "| Method | Batch | Peak, measured | Weights, derived | Trained gradients, derived | "
        "Per-example gradients, derived | Optimizer state, derived | Activations and rest, derived | "
        "Saved activations, derived |"
    ) in lines
    assert "| `nonprivate` | 8 | 6.0 | 100.0* | 1.0 | 0.0 | 2.0 | 2.0 | — |" in lines
    assert "| `dpsgd` | 8 | 8.0 | 100.0* | 1.0 | 0.0 | 2.0 | 4.0 | 3.0 |" in lines
    assert "- Saved activations: autograd's saved tensors." in lines
    assert any("Saved activations are a share of activations and rest" in line for line in lines)
    assert plot_png(result).startswith(b"\x89PNG")


# -- the command ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("--methods", "dpsgd:clipping=flat"),
        ("--keep-ratios", "0.5,2"),
        ("--rounds", "0"),
        ("--methods", "dpsdg"),
        ("--model", "llava-1.5-7b-random", "--layers", "40"),
        ("--model", "llava-1.5-7b-random", "--layers", "0,1"),
        ("--model", "llava-1.5-7b-random", "--hidden-size", "1000"),
        ("--model", "qwen2-vl-2b-random", "--hidden-size", "0"),
        ("--layers", "1,2"),  # the embedded model is not a random-init shape
        ("--trainable", "projector,bogus"),  # refused before any worker starts, not once per worker
        ("--lora", "r=x"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, capsys, tmp_path, run_cli):
    assert run_cli("bench", "--out-dir", str(tmp_path), *args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_bench_smoke_in_subprocesses(checkpoint, tmp_path, run_cli):
    out = tmp_path / "out"
    assert (
        run_cli(
            "bench",
            "--model",
            str(checkpoint),
            "--methods",
            "dpsgd:clipping=ghost",
            "--batch-sizes",
            "4",
            "--n-train",
            "16",
            "--steps",
            "1",
            "--rounds",
            "1",
            "--out-dir",
            str(out),
            "--name",
            "b",
        )
        == 0
    )
    result = json.loads((out / "b.json").read_text())
    base, ghost = result["cases"]
    assert (base["label"], ghost["label"]) == ("nonprivate", "dpsgd:clipping=ghost")
    assert base["memory"]["cpu"]["ratio"] == 1.0 and base["throughput_ratio"] == 1.0
    assert ghost["runs"] == 1 and ghost["samples_per_s"] > 0 and ghost["memory"]["cpu"]["peak_bytes"] > 0
    (measured,) = [m for m in result["measurements"] if m["case"] == 1]
    assert measured["systems"]["details"]["clipping"] == "ghost" and measured["systems"]["steps"] == 1
    norms = ghost["memory_breakdown"]["components"]["per_example_gradients"]
    assert "norms" in norms["source"] and norms["bytes"] > 0  # ghost clipping keeps norms, not gradients
    assert ghost["memory_breakdown"]["components"]["saved_activations"]["bytes"] > 0
    assert "`dpsgd:clipping=ghost`" in (out / "b.md").read_text()
    assert "Saved activations, derived" in (out / "b.md").read_text()
    assert (out / "b.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
def test_the_cuda_script_runs_its_methods_through_dpbench_bench(tmp_path):
    """The GPU script's own flags parse and run; here on the CPU at one narrow layer, which says
    nothing about a GPU's figures (none is measured here)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "benchmarks" / "cuda_llava7b.sh"
    env = {**os.environ, "DPBENCH": str(Path(sys.executable).with_name("dpbench"))}
    tiny = ["--device", "cpu", "--layers", "1", "--hidden-size", "128", "--batch-sizes", "2", "--steps", "1"]
    args = [*tiny, "--methods", "dpsgd:clipping=ghost", "--n-train", "16", "--out-dir", str(tmp_path), "--name", "s"]
    proc = subprocess.run(["bash", str(script), *args], env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "s.json").read_text())
    assert result["base"]["model"] == "llava-1.5-7b-random" and result["base"]["training"]["precision"] == "bf16"
    assert result["base"]["lora"]["targets"] == ["q_proj", "v_proj"]
    assert [c["label"] for c in result["cases"]] == ["nonprivate", "dpsgd:clipping=ghost"]
    assert all(c["visual_tokens"]["before"] == 576 and c["layers"] == 1 for c in result["cases"])


def test_a_measurement_that_sampled_no_example_fails_instead_of_reporting_zero(monkeypatch):
    from types import SimpleNamespace

    from dpbench import benchmark_worker, phases
    from dpbench.spec import RunSpec

    empty = SimpleNamespace(report=SimpleNamespace(samples=0, steps=1, tokens=0, details={}))
    monkeypatch.setattr(phases, "check", lambda spec: None)
    monkeypatch.setattr(phases, "prepare", lambda checked, with_base: None)
    monkeypatch.setattr(phases, "train", lambda prepared: empty)
    with pytest.raises(DpbenchError, match="no example was sampled in 1 step"):
        benchmark_worker.train_systems(RunSpec(method="dpzo"))
