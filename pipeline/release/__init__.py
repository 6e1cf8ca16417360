"""Release packaging, validation, Croissant metadata and rebuilds (docs/release.md). Each module one job:
files (safe reading and shared helpers), splits, package, card, metadata (metadata-only releases),
validate, croissant, rebuild."""
