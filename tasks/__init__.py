"""Multimodal tasks. Importing this package registers every task."""

from dpbench.tasks import scienceqa  # noqa: F401  (registers "scienceqa")
