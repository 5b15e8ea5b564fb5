"""vision layers (being written)."""
