"""Training across two CPU processes (gloo): the clipped sum, the noise and the accounted ε are
the one-process run's; every rank applies the same update; `dpbench run --nproc 2` writes one
valid result with a memory record per rank."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from dpbench import distributed
from dpbench.schemas import validation_errors

sys.path.insert(0, str(Path(__file__).parent))  # spawned ranks import their jobs by module name
import distributed_jobs  # noqa: E402
from distributed_jobs import clipped_sum, flat, released_noise, trainable, trained_parameters  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def on_ranks(job, *args, tmp_path, size: int = 2) -> list:
    """`job(world, *args)` on `size` gloo processes; what each rank returned, in rank order."""
    mp.start_processes(
        distributed_jobs.rank_main,
        args=(size, free_port(), job, args, str(tmp_path)),
        nprocs=size,
        start_method="spawn",
    )
    return [torch.load(tmp_path / f"{r}.pt", weights_only=False) for r in range(size)]


@pytest.mark.slow
@pytest.mark.parametrize("clipping", ["per-sample", "ghost"])
def test_the_clipped_sum_over_two_ranks_is_the_one_process_sum(checkpoint, digit_examples, tmp_path, clipping):
    one = clipped_sum(distributed.World(), checkpoint, digit_examples, clipping)
    two = on_ranks(clipped_sum, checkpoint, digit_examples, clipping, tmp_path=tmp_path)
    assert torch.equal(two[0], two[1])  # every rank steps on the same gradient
    assert one.abs().max() > 0
    torch.testing.assert_close(two[0], one, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_noise_is_added_once_across_ranks(checkpoint, digit_examples, tmp_path):
    """σ = 1, C = 0.05: the released noise has variance (σC)² in total; per rank it would be twice that."""
    two = on_ranks(released_noise, checkpoint, digit_examples, 3, tmp_path=tmp_path)
    assert torch.equal(two[0], two[1])
    variance = float(two[0].double().var()) / 0.05**2
    assert two[0].numel() > 3000
    assert 0.9 < variance < 1.1, variance


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dualpriv", "dpzo", "nonprivate"])
def test_every_rank_applies_the_same_update(checkpoint, digit_examples, tmp_path, method):
    (p0, s0, e0, l0), (p1, s1, e1, l1) = on_ranks(
        trained_parameters, checkpoint, digit_examples, method, tmp_path=tmp_path
    )
    assert torch.equal(p0, p1) and np.array_equal(s0, s1) and e0 == e1 and l0 == l1
    assert not torch.equal(p0, flat(trainable(checkpoint)))  # it trained
    if method == "dpzo":  # one Poisson sample split across the ranks: the one-process run, up to float order
        one, scores, epsilon, losses = trained_parameters(distributed.World(), checkpoint, digit_examples, method)
        torch.testing.assert_close(p0, one, rtol=1e-4, atol=1e-6)
        assert epsilon == e0 and losses == pytest.approx(l0, rel=1e-5)


def cli_run(tmp_path, checkpoint, *flags):
    args = ["run", "--model", str(checkpoint), "--steps", "3", "--batch-size", "16", "--n-train", "48"]
    args += ["--eval-limit", "8", "--runs-dir", str(tmp_path / "runs"), *flags]
    done = subprocess.run([sys.executable, "-m", "dpbench.cli", *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
@pytest.mark.parametrize(
    "method, audit",
    [
        ("dpsgd", ["--attacks", "loss,lira", "--audit-references", "1", "--gradient-canaries", "20"]),
        ("dpzo", ["--no-audit"]),
    ],
)
def test_a_two_process_run_writes_one_result_with_a_memory_record_per_rank(checkpoint, tmp_path, method, audit):
    """With the audit: rank 0 trains its reference model alone, after the other rank has left."""
    two = cli_run(tmp_path, checkpoint, "--method", method, "--nproc", "2", *audit)
    assert two.stdout.count("Notice: no ScienceQA") == 1 and two.stdout.count("dpbench run ") == 1
    cli_run(tmp_path, checkpoint, "--method", method, *audit)
    results = {}
    for folder in (tmp_path / "runs").iterdir():
        result = json.loads((folder / "result.json").read_text())
        assert validation_errors(result) == []
        results[result["spec"]["training"]["nproc"]] = result
    assert set(results) == {1, 2}  # a configuration of its own: two run ids
    memory = results[2]["systems"]["peak_memory"]
    assert [m["rank"] for m in memory] == [0, 1] and all(m["peak_bytes"] > 0 for m in memory)
    assert "rank" not in results[1]["systems"]["peak_memory"][0]
    assert results[2]["privacy"]["epsilon"] == results[1]["privacy"]["epsilon"]
    assert results[2]["privacy"]["sample_rate"] == results[1]["privacy"]["sample_rate"]
    assert results[2]["training"]["steps"] == 3
    if method == "dpsgd":  # the audit ran on rank 0, reference model and white-box canaries included
        assert set(results[2]["audit"]["attacks"]) == {"loss", "lira"} and results[2]["audit"]["whitebox"]["m"] == 20


@pytest.mark.slow
def test_a_bad_input_to_a_two_process_run_is_one_line_before_any_rank_starts(tmp_path):
    args = ["run", "--nproc", "2", "--data-dir", str(tmp_path / "missing"), "--runs-dir", str(tmp_path / "runs")]
    done = subprocess.run([sys.executable, "-m", "dpbench.cli", *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        f"error: ScienceQA data dir {tmp_path / 'missing'} does not exist"
    ]
    assert "Traceback" not in done.stdout + done.stderr and not (tmp_path / "runs").exists()


def test_a_spec_launched_with_another_world_size_is_refused(monkeypatch):
    from dpbench.errors import DpbenchError

    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(DpbenchError, match="nproc = 2 but 3"):
        distributed.init("cpu", 2)
