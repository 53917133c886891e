import zlib

import numpy as np

from dpbench.attacks.base import ATTACKS, Attack


@ATTACKS.register("zlib")
class ZlibAttack(Attack):
    """Carlini et al. (2021): loss relative to the text's zlib entropy (bits of its compression)."""

    def score(self, signals):
        entropy = np.array([8 * len(zlib.compress((e.prompt + e.target).encode())) for e in signals.examples])
        return -signals.loss("target") / entropy
