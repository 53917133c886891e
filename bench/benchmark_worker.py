"""One benchmark measurement: train a run spec, write its systems figures as JSON, nothing else.

`dpbench bench` starts this in a fresh process per measurement
(`python -m dpbench.benchmark_worker SPEC.json OUT.json`), so no allocator cache, compiled
kernel or leaked tensor of one method inflates or flatters the next. It runs the training
phase of `dpbench run` (same loading, same `PeakMemory` around `Method.train`) but neither
evaluates nor audits nor writes a run folder: those would cost far more than the steps measured.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from dpbench.errors import DpbenchError


def train_systems(spec) -> dict:
    """Train as `dpbench run` does; return peak memory per device, throughput and tokens kept."""
    from dpbench.methods.base import METHODS
    from dpbench.models.lora import setup_parameters
    from dpbench.models.registry import load_model
    from dpbench.privacy import check_delta
    from dpbench.runner import check_names, run_delta, training_examples
    from dpbench.systems import PeakMemory, throughput
    from dpbench.tasks.base import TASKS

    check_names(spec)
    task = TASKS.get(spec.task)()
    method = METHODS.get(spec.method)(**spec.method_options)
    data = task.load(spec.data_dir)
    train = training_examples(spec, data)
    delta = run_delta(spec, len(train))
    if method.private:
        check_delta(delta, len(train))
    model = load_model(spec.model, spec.device)
    setup_parameters(model, spec)
    method.prepare(model)
    with PeakMemory(spec.device) as memory:
        t0 = time.perf_counter()
        report = method.train(model, train, spec, delta)
        wall = time.perf_counter() - t0
    return {
        "steps": report.steps,
        "peak_memory": memory.records,
        "train": throughput(wall, report.samples, report.tokens),
        "visual_tokens": {"before": model.visual_tokens_per_image, "after": model.visual_tokens_kept},
        "details": report.details,
    }


def main(argv: list[str]) -> int:
    from dpbench.spec import RunSpec, load_spec_file

    if len(argv) != 2:
        print("usage: python -m dpbench.benchmark_worker SPEC.json OUT.json", file=sys.stderr)
        return 2
    try:
        systems = train_systems(RunSpec.from_dict(load_spec_file(argv[0])))
    except DpbenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    Path(argv[1]).write_text(json.dumps(systems, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
