"""visq."""
