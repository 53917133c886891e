from dpbench.attacks.base import ATTACKS, Attack


@ATTACKS.register("image")
class ImageAttack(Attack):
    """Leakage through the visual input: how much more the fine-tuned model relies on an
    example's real image (loss with a blank image minus loss with the real one) than the
    base model does. A member's answer was fitted to its own picture."""

    def score(self, signals):
        target_gain = signals.loss("target", blank_image=True) - signals.loss("target")
        base_gain = signals.loss("base", blank_image=True) - signals.loss("base")
        return target_gain - base_gain
