"""Readers of published corpora that write a sources file (MEAD)."""
