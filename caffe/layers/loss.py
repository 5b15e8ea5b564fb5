"""loss layers (being written)."""
