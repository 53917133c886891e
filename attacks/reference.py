from dpbench.attacks.base import ATTACKS, Attack


@ATTACKS.register("reference")
class ReferenceAttack(Attack):
    """Loss calibrated by a reference model that never saw the private data: the public
    pre-trained base model (Carlini et al. 2022, Mireshghallah et al. 2022)."""

    def score(self, signals):
        return signals.loss("reference") - signals.loss("target")
