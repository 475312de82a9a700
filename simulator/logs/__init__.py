"""Offline logs of dispatch decisions: a versioned Parquet format, generation, cards, training view."""
