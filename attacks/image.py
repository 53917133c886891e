from dpbench.attacks.base import ATTACKS, Attack


@ATTACKS.register("image")
class ImageAttack(Attack):
    """Leakage through the visual input: how much more the fine-tuned model relies on an
    example's real image (loss with a blank image minus loss with the real one) than the
    base model does. A member's answer was fitted to its own picture."""

    def score(self, signals):
        target_gain = signals.loss("target", blank_image=True) - signals.loss("target")
        reference_gain = signals.loss("reference", blank_image=True) - signals.loss("reference")
        return target_gain - reference_gain
