"""The demo: generated talking-person inputs (a fixture maker, not pipeline: it may use MediaPipe)."""
