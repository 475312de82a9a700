"""Offline multi-agent datasets: episode-major arrays, flattened into transitions for training."""
