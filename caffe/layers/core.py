"""core layers (being written)."""
