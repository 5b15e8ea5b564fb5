"""recurrent layers (being written)."""
