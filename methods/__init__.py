"""Fine-tuning methods. Importing this package registers every method."""

from dpbench.methods import (  # noqa: F401  (registers them)
    dpsgd,
    dpzo,  # noqa: F401
    dualpriv,  # noqa: F401
    nonprivate,
)
