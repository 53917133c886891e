"""Model builders and loaders: the embedded tiny LLaVA and local Hugging Face checkpoints."""
