"""A/B comparison of two policies in the simulator under common random numbers."""
