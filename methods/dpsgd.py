"""DP-SGD (Abadi et al. 2016): per-example clipping and Gaussian noise, through Opacus.

`clipping: ghost` computes the same clipped gradient with Opacus' ghost clipping (norms
without per-example gradients): less memory, about twice the backward work."""

from __future__ import annotations

from dpbench.methods.base import METHODS, Method, TrainReport
from dpbench.methods.opacus_training import check_clipping, train_dp_sgd


@METHODS.register("dpsgd")
class DPSGD(Method):
    """DP-SGD through Opacus: per-example clipping, Gaussian noise, Poisson sampling, accounting."""

    options = {"secure_rng": False, "clipping": "per-sample"}  # or "ghost"
    per_example_gradients = True

    def __init__(self, **options):
        super().__init__(**options)
        check_clipping(self.opts["clipping"])

    def train(self, model, data, spec, delta) -> TrainReport:
        return train_dp_sgd(model, data, spec, delta, label="DP-SGD", secure_rng=self.opts["secure_rng"],
                            clipping=self.opts["clipping"])
