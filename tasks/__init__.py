"""Multimodal tasks. Importing this package registers every task."""

from dpbench.tasks import scienceqa  # noqa: F401  (registers "scienceqa")
from dpbench.tasks import vqa  # noqa: F401  (registers "vqa")
from dpbench.tasks import captioning  # noqa: F401  (registers "captioning")
