"""Broadcast curation (docs/curation.md): burned-in text and subtitles, head and camera motion,
picture quality, occlusion, and fingerprints for rebroadcast groups across videos and runs."""

from .curate import curate_clip, curate_clip_set, gates
from .duplicates import Fingerprinted, Groups, group
from .options import CurateOptions

__all__ = ["CurateOptions", "Fingerprinted", "Groups", "curate_clip", "curate_clip_set", "gates", "group"]
