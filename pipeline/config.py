"""Run configuration: defaults in one place, a YAML file on top, command-line overrides last.

The effective configuration is written next to every run's outputs (``config.yaml``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DownloadConfig(_Section):
    max_height: int = Field(720, ge=144, description="yt-dlp format height cap")
    retries: int = Field(3, ge=0, description="attempts after the first, with exponential backoff")
    backoff_s: float = Field(2.0, ge=0, description="first backoff; doubles each retry")
    rate_limit: str | None = Field(None, description="yt-dlp rate limit, e.g. '2M' (bytes/s)")
    cookies_file: str | None = None
    use_download_archive: bool = True
    socket_timeout_s: float = Field(30.0, gt=0)
    max_filesize_mb: int | None = Field(4096, ge=1, description="refuse larger downloads")
    allow_file_urls: bool = True


class NormalizeConfig(_Section):
    fps: int = Field(25, ge=1)
    max_height: int = Field(720, ge=64)
    sample_rate_hz: int = Field(16000, ge=8000)
    min_duration_s: float = Field(2.0, ge=0)
    max_duration_s: float = Field(4 * 3600.0, gt=0)
    crf: int = Field(20, ge=0, le=51)
    preset: str = "veryfast"
    # x264 with frame threads was seen to encode the last frames differently between identical runs;
    # one thread per encode keeps re-runs byte-identical (parallelism comes from Ray, across videos).
    encode_threads: int = Field(1, ge=1)
    timeout_s: float = Field(3600.0, gt=0, description="per-video ffmpeg time limit")


class ShotConfig(_Section):
    enabled: bool = True
    detector: str = Field("content", pattern=r"^(content|adaptive)$")
    threshold: float = Field(27.0, gt=0, description="PySceneDetect ContentDetector threshold")
    min_shot_s: float = Field(0.6, gt=0)


class PoseConfig(_Section):
    enabled: bool = True
    stride: int = Field(1, ge=1, description="analyse every n-th frame, interpolate the rest (flagged)")
    min_detection_confidence: float = Field(0.5, ge=0, le=1)
    min_tracking_confidence: float = Field(0.5, ge=0, le=1)
    track_iou: float = Field(0.3, ge=0, le=1)


class ClipConfig(_Section):
    mode: str = Field("selected", pattern=r"^(selected|fixed)$", description="selected: shots x speech turns x visibility; fixed: equal windows")
    window_s: float = Field(2.0, gt=0, description="clip length in fixed mode")
    min_last_clip_s: float = Field(0.0, ge=0, description="fixed mode: keep a shorter tail clip if at least this long (0: drop)")
    max_clips_per_video: int | None = Field(None, ge=1)
    min_clip_s: float = Field(2.0, gt=0)
    max_clip_s: float = Field(10.0, gt=0)
    turn_gap_s: float = Field(0.6, ge=0)
    turn_pad_s: float = Field(0.2, ge=0)
    min_face_height_frac: float = Field(0.08, ge=0, le=1)
    min_face_confidence: float = Field(0.6, ge=0, le=1)
    min_torso_confidence: float = Field(0.3, ge=0, le=1)
    min_speech_ratio: float = Field(0.3, ge=0, le=1)
    min_face_sharpness: float = Field(15.0, ge=0, description="variance of the Laplacian of the face crop")
    crop: str = Field("full", pattern=r"^(full|upper_body|face)$", description="shard video: full frame, upper-body square (PAHA), face (FLAME)")
    crop_size: int | None = Field(None, ge=16, multiple_of=2, description="side of a cropped clip in pixels, even (default: the crop's own size)")


class SpeechConfig(_Section):
    enabled: bool = True
    model: str = Field("base", description="'base' (offline Whisper base from PyPI), a local CTranslate2 dir, or a cached hub name")
    language: str | None = Field("zh", description="default language; a source's 'language' column wins; null: detect")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda)$")
    compute_type: str = Field("auto", description="auto: float16 on CUDA, int8 on CPU")
    batch_size: int = Field(8, ge=1)
    beam_size: int = Field(5, ge=1)
    cpu_threads: int = Field(1, ge=1, description="CTranslate2 threads per actor")
    align_model: str | None = Field(None, description="local Wav2Vec2ForCTC dir for whisperX forced alignment")
    diarization: str = Field("auto", pattern=r"^(auto|pyannote|embeddings|none)$")
    pyannote_model: str | None = Field(None, description="local path or cached hub id of a pyannote diarization pipeline")
    hf_token: str | None = None
    min_speakers: int | None = Field(None, ge=1)
    max_speakers: int | None = Field(None, ge=1)
    speaker_distance_threshold: float = Field(0.35, gt=0, lt=2)
    cache_dir: str | None = Field(None, description="where the offline Whisper base is assembled (default ~/.cache/cnas)")


class FlameConfig(_Section):
    enabled: bool = Field(True, description="runs when the assets below exist; otherwise reported as skipped")
    flame_model: str | None = Field(None, description="FLAME 2020/2023 generic_model.pkl")
    deca_checkpoint: str | None = Field(None, description="DECA deca_model.tar")
    landmark_embedding: str | None = Field(None, description="DECA landmark_embedding.npy (optional: only for refinement/landmarks)")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda)$")
    batch_size: int = Field(32, ge=1)


class ReleaseConfig(_Section):
    name: str = "CNAS"
    split_ratios: dict[str, float] = Field(default_factory=lambda: {"train": 0.9, "val": 0.05, "test": 0.05})
    seed: int = 0
    target_shard_mb: float = Field(512.0, gt=0)
    max_shard_count: int = Field(10000, ge=1)
    speaker_keys: list[str] = Field(default_factory=lambda: ["speaker", "anchor"], description="source metadata keys naming the speaker; else the video id")
    licence: str = Field("research-only; see the terms below", description="licence/terms field of the dataset card")
    terms: str = "Clips come from third-party broadcasts; use for non-commercial research; respect the rights of the depicted persons."

    @model_validator(mode="after")
    def _ratios(self) -> "ReleaseConfig":
        if abs(sum(self.split_ratios.values()) - 1.0) > 1e-6 or any(v < 0 for v in self.split_ratios.values()):
            raise ValueError(f"release.split_ratios must be non-negative and sum to 1, got {self.split_ratios}")
        return self


class ShardConfig(_Section):
    max_count: int = Field(1000, ge=1, description="samples per shard")
    max_size_mb: float = Field(1024.0, gt=0, description="bytes per shard (soft: a shard closes once over)")
    prefix: str = Field("cnas", pattern=r"^[A-Za-z0-9_-]+$")


class RayConfig(_Section):
    address: str | None = Field(None, description="existing cluster ('auto' or ray://host:10001); None: embedded local Ray")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the embedded local Ray (default: all)")
    download_cpus: float = Field(0.5, gt=0, description="CPUs reserved per download task (I/O bound)")
    normalize_cpus: float = Field(1.0, gt=0)
    clip_cpus: float = Field(1.0, gt=0)
    speech_actors: int = Field(1, ge=1, description="max actors in the speech pool (each loads the models once)")
    speech_cpus: float = Field(1.0, gt=0)
    speech_gpus: float = Field(0.0, ge=0, description="GPUs per speech actor; 0 with speech.device=cuda means 1")
    shots_cpus: float = Field(1.0, gt=0)
    pose_actors: int = Field(1, ge=1, description="max actors in the pose pool (MediaPipe graphs load once each)")
    pose_cpus: float = Field(1.0, gt=0)
    flame_actors: int = Field(1, ge=1)
    flame_cpus: float = Field(1.0, gt=0)
    flame_gpus: float = Field(0.0, ge=0, description="GPUs per FLAME actor; 0 with flame.device=cuda means 1")
    reserve_op_resources: bool = Field(
        False, description="Ray Data's per-operator resource reservation; off: any stage may use idle CPUs")
    max_blocks: int = Field(1000, ge=1, description="at most this many Ray Data blocks (one video per block below it)")


class Config(_Section):
    """Everything one ingestion run needs to know besides its sources and output folder."""

    work_dir: str | None = Field(None, description="local path or fsspec URI; default <out>/work")
    retry_failed: bool = Field(True, description="re-try videos that failed in an earlier run")
    download: DownloadConfig = Field(default_factory=DownloadConfig)
    normalize: NormalizeConfig = Field(default_factory=NormalizeConfig)
    shots: ShotConfig = Field(default_factory=ShotConfig)
    pose: PoseConfig = Field(default_factory=PoseConfig)
    speech: SpeechConfig = Field(default_factory=SpeechConfig)
    clips: ClipConfig = Field(default_factory=ClipConfig)
    flame: FlameConfig = Field(default_factory=FlameConfig)
    shards: ShardConfig = Field(default_factory=ShardConfig)
    release: ReleaseConfig = Field(default_factory=ReleaseConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="after")
    def _clip_fits_frame_grid(self) -> "Config":
        if self.clips.min_clip_s > self.clips.max_clip_s:
            raise ValueError(f"clips.min_clip_s={self.clips.min_clip_s} > clips.max_clip_s={self.clips.max_clip_s}")
        frames = self.clips.window_s * self.normalize.fps
        if abs(frames - round(frames)) > 1e-6:
            raise ValueError(f"clips.window_s={self.clips.window_s} is not a whole number of frames at {self.normalize.fps} fps")
        return self


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set ``a.b=value`` items (values parsed as YAML) into the nested dict ``data``."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not of the form section.key=value")
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file at ``path`` (if any), then ``section.key=value`` overrides."""
    data: dict[str, Any] = {}
    if path:
        text = Path(path).read_text(encoding="utf-8")
        loaded = yaml.safe_load(text) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping at the top level")
        data = loaded
    apply_overrides(data, overrides or [])
    return Config.model_validate(data)


def dump_config(config: Config) -> str:
    """The effective configuration as YAML."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
