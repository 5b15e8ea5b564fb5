"""python layers (being written)."""
