"""The ``cnas`` command: one entry point above the ingestion pipeline and the trainers."""
