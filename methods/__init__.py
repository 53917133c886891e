"""Fine-tuning methods. Importing this package registers every method."""

from dpbench.methods import dpsgd, nonprivate  # noqa: F401  (registers them)
from dpbench.methods import dpzo  # noqa: F401
from dpbench.methods import dualpriv  # noqa: F401
