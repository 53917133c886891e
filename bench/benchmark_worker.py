"""One benchmark measurement: train a run spec, write its systems figures as JSON, nothing else.

`dpbench bench` starts this in a fresh process per measurement
(`python -m dpbench.benchmark_worker SPEC.json OUT.json`), so no allocator cache, compiled
kernel or leaked tensor of one method inflates or flatters the next. It runs the prepare and
train phases of `dpbench run` (`dpbench.phases`: the same loading, the same `PeakMemory` around
`Method.train`) but neither evaluates nor audits nor writes a run folder: those would cost far
more than the steps measured. So it records no phase walls either: `systems.phases` and
`systems.phase_parts` (audit references, attacks, white-box analysis, ...) are `dpbench run`'s;
here the training's own wall is the figure (`train.wall_s`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dpbench import phases
from dpbench.errors import DpbenchError
from dpbench.spec import RunSpec, load_spec_file
from dpbench.systems import throughput


def train_systems(spec: RunSpec) -> dict:
    """Train as `dpbench run` does; return peak memory per device and where it went, throughput and tokens kept."""
    trained = phases.train(phases.prepare(phases.check(spec), with_base=False))  # it only trains
    report = trained.report
    if report.samples == 0:  # Poisson sampling drew no example: nothing was measured
        raise DpbenchError(
            f"no example was sampled in {report.steps} step(s) of expected batch {spec.training.batch_size}: "
            "raise --steps or --batch-sizes"
        )
    return {
        "steps": report.steps,
        "peak_memory": trained.peak_memory,
        "memory_breakdown": trained.memory_breakdown,
        "train": throughput(trained.wall_s, report.samples, report.tokens),
        "visual_tokens": trained.visual_tokens,
        "details": report.details,
    }


def main(argv: list[str]) -> int:
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
