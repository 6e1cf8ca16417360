"""Reports on runs and releases: the HTML report, contact sheets, ``cnas status``."""
