"""Data: sources (ingest), parsing and validation (prepare), the leakage map and grouped splits.

A dependency of every data stage in dvc.yaml: not empty, so DVC hashes it without a warning.
"""
