"""Clip records for synthetic test shards: the loader reads every ``json`` member as a
``schemas.ClipRecord``, so test samples carry a valid one, consistent with their frames and audio."""

from __future__ import annotations

import uuid
from typing import Any

from schemas import ClipRecord


def clip_json(key: str, num_frames: int, members: list[str], fps: float = 25.0, sample_rate_hz: int = 16000,
              width: int = 64, height: int = 64, **fields: Any) -> bytes:
    """The ``json`` member of sample ``key`` (``<video_id>-<index>``): a clip of ``num_frames`` frames
    from time 0 of its source, audio of the same length; ``fields`` set the other record fields."""
    video_id, index = key.rsplit("-", 1)
    length_s = num_frames / fps
    record = ClipRecord(key=key, clip_uid=str(uuid.uuid5(uuid.NAMESPACE_URL, key)), video_id=video_id, index=int(index),
                        source_uri=f"test://{video_id}", start_s=0.0, end_s=length_s, source_duration_s=length_s, fps=fps,
                        num_frames=num_frames, sample_rate_hz=sample_rate_hz, num_audio_samples=round(length_s * sample_rate_hz),
                        width=width, height=height, members=members, **fields)
    return record.to_json().encode()
