"""DP-SGD (Abadi et al. 2016): per-example clipping and Gaussian noise, through Opacus."""

from __future__ import annotations

from dpbench.methods.base import METHODS, Method, TrainReport
from dpbench.methods.opacus_training import train_dp_sgd


@METHODS.register("dpsgd")
class DPSGD(Method):
    options = {"secure_rng": False}

    def train(self, model, data, spec, delta) -> TrainReport:
        return train_dp_sgd(model, data, spec, delta, label="DP-SGD", secure_rng=self.opts["secure_rng"])
