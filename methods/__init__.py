"""Fine-tuning methods. Importing this package registers every method."""
