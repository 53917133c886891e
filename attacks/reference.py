from dpbench.attacks.base import ATTACKS, Attack


@ATTACKS.register("reference")
class ReferenceAttack(Attack):
    """Loss calibrated by the base model: the target's loss against that of the public
    pre-trained model it was fine-tuned from, which never saw the private data (the "reference
    model" of Carlini et al. 2022 and Mireshghallah et al. 2022, hence the attack's name)."""

    def score(self, signals):
        return signals.loss("base") - signals.loss("target")
