"""Multimodal tasks. Importing this package registers every task."""
