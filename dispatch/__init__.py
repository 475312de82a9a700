"""The shared decision path: snapshot types, candidates, features, joint-action assembly.

numpy, numba-compiled loops and scipy (the min-cost assignment), so the simulator, the service and the
training code all import the same code without pulling torch or grpc.
"""

SCHEMA_VERSION = 1
"""Version of the snapshot/feature contract; bumped whenever feature meaning or order changes."""
