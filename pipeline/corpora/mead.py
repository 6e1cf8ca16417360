"""Source adapters: turn a labelled corpus on disk into a sources csv for ``cnas ingest``.

MEAD (Wang et al., 2020) stores one video per (speaker, camera view, emotion, intensity level,
sentence) as ``<speaker>/video/<view>/<emotion>/level_<n>/<sentence>.mp4`` (speakers ``M003``,
``W009`` …; views ``front``, ``left_30`` …; neutral has only ``level_1``). The adapter reads those
labels from the path into the metadata the facial trainer uses (``emotion``,
``emotion_intensity``) plus ``speaker`` and ``view``.

    cnas adapt mead /data/MEAD --view front --out mead_front.csv
    cnas ingest --sources mead_front.csv --out runs/mead
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

MEAD_EMOTIONS = ("angry", "contempt", "disgusted", "fear", "happy", "neutral", "sad", "surprised")
_MEAD_PATH = re.compile(
    r"(?P<speaker>[MW]\d{3})/video/(?P<view>[a-z_0-9]+)/(?P<emotion>[a-z]+)/level_(?P<level>[1-3])/(?P<clip>\d+)\.(?:mp4|avi|mov)$",
    re.I,
)


@dataclass(frozen=True)
class MeadClip:
    path: Path
    speaker: str
    view: str
    emotion: str
    level: int
    sentence: str

    @property
    def clip_id(self) -> str:
        return f"mead_{self.speaker}_{self.view}_{self.emotion}_l{self.level}_{self.sentence}"


def parse_mead_path(path: Path) -> MeadClip | None:
    """The labels encoded in a MEAD video path, or None when it does not follow MEAD's layout."""
    m = _MEAD_PATH.search(path.as_posix())
    if not m or m["emotion"].lower() not in MEAD_EMOTIONS:
        return None
    return MeadClip(path, m["speaker"].upper(), m["view"].lower(), m["emotion"].lower(), int(m["level"]), m["clip"])


def scan_mead(root: str | Path, views: tuple[str, ...] = ("front",)) -> tuple[list[MeadClip], list[Path]]:
    """MEAD clips under ``root`` in the given camera views (empty: all), and the videos that did not parse."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"MEAD root not found: {root}")
    clips, skipped = [], []
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() not in (".mp4", ".avi", ".mov") or not p.is_file():
            continue
        clip = parse_mead_path(p.relative_to(root))
        if clip is None:
            skipped.append(p)
        elif not views or clip.view in views:
            clips.append(MeadClip(p.resolve(), clip.speaker, clip.view, clip.emotion, clip.level, clip.sentence))
    return clips, skipped


def write_mead_sources(root: str | Path, out: str | Path, views: tuple[str, ...] = ("front",), language: str = "en") -> tuple[int, int]:
    """Write a sources csv (``path,id,emotion,emotion_intensity,speaker,view,language,corpus``);
    returns (clips written, videos skipped because their path is not MEAD's layout)."""
    clips, skipped = scan_mead(root, views)
    if not clips:
        raise ValueError(f"no MEAD videos (<speaker>/video/<view>/<emotion>/level_<n>/<nnn>.mp4) under {root} for views {views}")
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "id", "emotion", "emotion_intensity", "speaker", "view", "language", "corpus"])
        for c in clips:
            w.writerow([str(c.path), c.clip_id, c.emotion, c.level, c.speaker, c.view, language, "MEAD"])
    return len(clips), len(skipped)
