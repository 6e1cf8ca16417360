"""Shot stage: cut boundaries with PySceneDetect, so that no clip straddles a cut. Ray-free."""

from __future__ import annotations

from pydantic import Field

from schemas import NormalizedMedia, Shot, ShotList
from schemas.settings import Settings

from .errors import StageError


class ShotOptions(Settings):
    """Options of the shot stage (config section ``shots``)."""

    enabled: bool = True
    detector: str = Field("content", pattern=r"^(content|adaptive)$")
    threshold: float = Field(27.0, gt=0, description="PySceneDetect ContentDetector threshold")
    min_shot_s: float = Field(0.6, gt=0)


def detect_shots(media: NormalizedMedia, opts: ShotOptions = ShotOptions()) -> ShotList:
    """Shots of the normalised video (frame ranges at its constant frame rate)."""
    from scenedetect import AdaptiveDetector, ContentDetector, detect

    min_len = max(1, round(opts.min_shot_s * media.fps))
    if opts.detector == "content":
        detector = ContentDetector(threshold=opts.threshold, min_scene_len=min_len)
    elif opts.detector == "adaptive":
        detector = AdaptiveDetector(min_scene_len=min_len)
    else:
        raise StageError("bad_config", f"unknown shot detector {opts.detector!r}")
    try:
        scenes = detect(media.video_path, detector)
    except Exception as e:  # PySceneDetect wraps OpenCV errors in several types
        raise StageError("shot_detection_failed", f"{type(e).__name__}: {e}") from None
    cuts = sorted({s.get_frames() for s, _ in scenes[1:]} | {0})
    cuts = [c for c in cuts if 0 <= c < media.num_frames]
    bounds = cuts + [media.num_frames]
    shots = [Shot(start_frame=a, end_frame=b) for a, b in zip(bounds, bounds[1:]) if b > a]
    return ShotList(video_id=media.video_id, num_frames=media.num_frames, fps=media.fps, shots=shots,
                    backend=f"pyscenedetect-{opts.detector}:{opts.threshold:g}")
