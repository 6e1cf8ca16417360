"""The sample layout: member suffixes of a shard sample and where a clip's member files live.

One place for the names that the clip stages write, the shard sink reads and the trainers decode.
A clip's member files sit in the work dir at ``clips/<video_id>/<key>.<suffix>``; in a shard the
sample is ``<key>.<suffix>`` (WebDataset splits key and suffix at the first dot, so keys have none).
"""

from __future__ import annotations

#: Work-dir folder of the cut clips.
CLIPS_DIR = "clips"

#: Member suffixes: clip metadata (a ``ClipRecord``), the clip video and audio, and the optional
#: arrays of the pose and FLAME stages.
JSON, MP4, WAV, POSE, FLAME = "json", "mp4", "wav", "pose.npz", "flame.npz"

#: Members every sample has, in shard order.
BASE_MEMBERS: tuple[str, ...] = (JSON, MP4, WAV)

#: Every member a sample may have.
ALL_MEMBERS: tuple[str, ...] = (*BASE_MEMBERS, POSE, FLAME)


def member_name(key: str, suffix: str) -> str:
    """File name of one member: ``<key>.<suffix>``."""
    if "." in key:
        raise ValueError(f"sample key {key!r} has a dot (WebDataset would split it there)")
    return f"{key}.{suffix}"


def clip_member_parts(video_id: str, key: str, suffix: str) -> tuple[str, str, str]:
    """Work-dir path components of one member file: ``("clips", video_id, "<key>.<suffix>")``."""
    return CLIPS_DIR, video_id, member_name(key, suffix)


def file_members(members: list[str]) -> list[str]:
    """The members stored as files in the work dir (the ``json`` member is the record itself)."""
    return [m for m in members if m != JSON]
