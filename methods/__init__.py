"""Fine-tuning methods. Importing this package registers every method."""

from dpbench.methods import dpsgd, nonprivate  # noqa: F401  (registers them)
