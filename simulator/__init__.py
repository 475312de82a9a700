"""The MDRP meal-delivery simulator: instances, event engine, heuristics, metrics, solution files."""

SIMULATOR_VERSION = "0.1.0"
