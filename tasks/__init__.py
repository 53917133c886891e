"""Multimodal tasks. Importing this package registers every task."""

from dpbench.tasks import (
    captioning,  # noqa: F401  (registers "captioning")
    scienceqa,  # noqa: F401  (registers "scienceqa")
    vqa,  # noqa: F401  (registers "vqa")
)
