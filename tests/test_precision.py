"""bf16 mixed precision (`--precision bf16`): forwards under autocast, per-sample gradients within
bf16's tolerance of the fp32 reference, and fp32 master weights, gradients and optimiser state."""

from __future__ import annotations

import pytest
import torch

from dpbench.methods.dpsgd import make_private
from dpbench.models.loading import load_model
from dpbench.spec import RunSpec


def per_sample_gradients(checkpoint, examples, precision: str):
    model = load_model(str(checkpoint), "cpu")
    model.set_trainable(["projector", "language_model"])
    spec = RunSpec().replace(**{"training.batch_size": len(examples)})
    dp = make_private(model, len(examples), spec, 0.0, clipping="per-sample", secure_rng=False)
    with model.training_precision(precision):
        batch = model.encode(examples, [e.target for e in examples])
        per_example = model.per_example_loss(batch, model=dp.module)
        dp.criterion(per_example).backward()
        sampled = [q.grad_sample for q in dp.params if q.grad_sample is not None]  # some take no part
        rows = torch.cat([g.reshape(len(examples), -1).double() for g in sampled], 1)
        assert dp.optimizer.pre_step()  # clip and sum: in the parameters' dtype
    assert all(q.dtype == q.grad.dtype == torch.float32 for q in dp.params)
    return rows, per_example.dtype


def test_bf16_per_sample_gradients_match_fp32_within_bf16_tolerance(checkpoint, digit_examples):
    fp32, _ = per_sample_gradients(checkpoint, digit_examples, "fp32")
    bf16, loss_dtype = per_sample_gradients(checkpoint, digit_examples, "bf16")
    assert loss_dtype == torch.float32  # the loss is taken on fp32 logits
    error = (bf16 - fp32).norm(dim=1) / fp32.norm(dim=1)
    assert float(error.min()) > 1e-4  # autocast was on: bf16 differs from fp32 ...
    assert float(error.max()) < 0.05  # ... by bf16's rounding (8 mantissa bits, a few layers deep)
    ratio = bf16.norm(dim=1) / fp32.norm(dim=1)  # the clipping factors follow the norms
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=0.02)


def test_precision_is_in_the_spec_and_its_hash_only_off_its_default():
    default = RunSpec()
    assert default.training.precision == "fp32"
    assert default.replace(**{"training.precision": "fp32"}).run_id() == default.run_id()
    assert default.replace(**{"training.precision": "bf16"}).run_id() != default.run_id()
    from dpbench.errors import DpbenchError

    with pytest.raises(DpbenchError, match="precision must be one of fp32, bf16"):
        default.replace(**{"training.precision": "fp16"})
