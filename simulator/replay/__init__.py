"""Replay of logged days through a policy: shadow, counterfactual re-simulation, off-policy estimates."""
