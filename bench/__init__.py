"""dpbench: benchmark and audit differentially private fine-tuning of multimodal LLMs."""

__version__ = "0.1.0"
