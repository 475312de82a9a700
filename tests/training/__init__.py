"""Tests of the training package: datasets, games, algorithms, harness."""
