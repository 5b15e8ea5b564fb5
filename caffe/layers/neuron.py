"""neuron layers (being written)."""
