"""Corpus reading, BPTT batching and data download."""
