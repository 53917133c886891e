from dpbench.attacks.base import ATTACKS, Attack


@ATTACKS.register("loss")
class LossAttack(Attack):
    """Yeom et al. (2018): members have lower loss under the fine-tuned model."""

    def score(self, signals):
        return -signals.loss("target")
