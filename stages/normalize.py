"""Normalize stage: probe with ffprobe, reject unusable inputs, transcode to the dataset's media format.

Output: ``video.mp4`` (H.264 yuv420p, constant ``fps``, height capped, no audio track) and
``audio.wav`` (mono 16-bit PCM at ``sample_rate_hz``) in ``out_dir``. Ray-free.
"""

from __future__ import annotations

import os
import subprocess

import ffmpeg
import soundfile as sf

from pydantic import Field

from schemas import NormalizedMedia, ProbeInfo
from schemas.settings import Settings, runtime_field

from .errors import StageError, temp_name

VIDEO_NAME, AUDIO_NAME = "video.mp4", "audio.wav"


class NormalizeOptions(Settings):
    """Options of the normalize stage (config section ``normalize``)."""

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
    timeout_s: float = runtime_field(3600.0, gt=0, description="per-video ffmpeg time limit")


def probe(path: str) -> ProbeInfo:
    """ffprobe ``path``. Raises ``StageError('unreadable', …)`` when ffprobe cannot parse it."""
    if not os.path.exists(path):
        raise StageError("not_found", f"no such file: {path}")
    size = os.path.getsize(path)
    if size == 0:
        raise StageError("empty_file", f"{path} is empty (0 bytes)")
    try:
        info = ffmpeg.probe(path)
    except ffmpeg.Error as e:
        raise StageError("unreadable", f"ffprobe cannot read {os.path.basename(path)}: {_last_line(e.stderr)}") from None
    streams = info.get("streams", [])
    # Cover art in audio files shows up as a one-frame video stream; it is not video.
    video = [s for s in streams if s.get("codec_type") == "video" and not s.get("disposition", {}).get("attached_pic")]
    audio = [s for s in streams if s.get("codec_type") == "audio"]
    fmt = info.get("format", {})
    durations = [_float(fmt.get("duration"))] + [_float(s.get("duration")) for s in video + audio]
    duration = max((d for d in durations if d is not None), default=0.0)
    v = video[0] if video else {}
    a = audio[0] if audio else {}
    return ProbeInfo(
        duration_s=duration,
        has_video=bool(video),
        has_audio=bool(audio),
        width=v.get("width") or None,
        height=v.get("height") or None,
        fps=_rate(v.get("avg_frame_rate")) or _rate(v.get("r_frame_rate")),
        video_codec=v.get("codec_name"),
        audio_codec=a.get("codec_name"),
        audio_sample_rate_hz=int(a["sample_rate"]) if a.get("sample_rate") else None,
        format_name=fmt.get("format_name"),
        size_bytes=size,
    )


def check_usable(p: ProbeInfo, opts: NormalizeOptions) -> None:
    """Raise ``StageError`` with the reason a probed input cannot become a sample."""
    if not p.has_video:
        raise StageError("no_video", "the input has no video stream")
    if not p.has_audio:
        raise StageError("no_audio", "the input has no audio stream")
    if p.duration_s < opts.min_duration_s:
        raise StageError("too_short", f"duration {p.duration_s:.2f} s < min {opts.min_duration_s} s")
    if p.duration_s > opts.max_duration_s:
        raise StageError("too_long", f"duration {p.duration_s:.0f} s > max {opts.max_duration_s:.0f} s")


def normalize(video_id: str, src_path: str, out_dir: str, opts: NormalizeOptions = NormalizeOptions()) -> NormalizedMedia:
    """Probe, check and transcode ``src_path`` into ``out_dir``; returns the normalised media record.

    Video: first video stream, constant ``opts.fps`` (frames dropped/duplicated by the ``fps``
    filter, not snapped to keyframes), height capped at ``opts.max_height`` keeping the aspect
    ratio, even dimensions, bit-exact flags so re-runs produce identical bytes.
    Audio: first audio stream down-mixed to mono and resampled to ``opts.sample_rate_hz``.
    """
    p = probe(src_path)
    check_usable(p, opts)
    os.makedirs(out_dir, exist_ok=True)
    video_out, audio_out = os.path.join(out_dir, VIDEO_NAME), os.path.join(out_dir, AUDIO_NAME)
    video_tmp, audio_tmp = temp_name(video_out, ".mp4"), temp_name(audio_out, ".wav")
    out_w, out_h = target_size(p.width or 2, p.height or 2, opts.max_height)
    src = ffmpeg.input(src_path, threads=1)  # single-threaded decode: identical bytes on every run
    video = src["v:0"].filter("fps", fps=opts.fps, round="near").filter("scale", out_w, out_h).filter("setsar", "1")
    v_out = ffmpeg.output(
        video, video_tmp, vcodec="libx264", preset=opts.preset, crf=opts.crf, pix_fmt="yuv420p",
        r=opts.fps, threads=opts.encode_threads, movflags="+faststart", map_metadata=-1,
        fflags="+bitexact", **{"flags:v": "+bitexact"}, format="mp4",
    )
    a_out = ffmpeg.output(
        src["a:0"], audio_tmp, acodec="pcm_s16le", ac=1, ar=opts.sample_rate_hz, map_metadata=-1, fflags="+bitexact",
        format="wav",
    )
    cmd = ffmpeg.merge_outputs(v_out, a_out).overwrite_output().compile()
    _run(cmd, opts.timeout_s, "transcode_failed")
    os.replace(video_tmp, video_out)
    os.replace(audio_tmp, audio_out)

    num_frames = count_frames(video_out)
    out_probe = ffmpeg.probe(video_out)["streams"][0]
    audio_info = sf.info(audio_out)
    if num_frames == 0 or audio_info.frames == 0:
        raise StageError("decode_failed", f"transcode produced {num_frames} frames and {audio_info.frames} audio samples")
    return NormalizedMedia(
        video_id=video_id,
        video_path=video_out,
        audio_path=audio_out,
        duration_s=num_frames / opts.fps,
        fps=float(opts.fps),
        num_frames=num_frames,
        width=int(out_probe["width"]),
        height=int(out_probe["height"]),
        sample_rate_hz=audio_info.samplerate,
        num_audio_samples=audio_info.frames,
        source_probe=p,
    )


def target_size(width: int, height: int, max_height: int) -> tuple[int, int]:
    """Output (width, height): height capped at ``max_height``, aspect kept, both even (yuv420p needs it)."""
    out_h = min(height, max_height) // 2 * 2
    out_w = max(2, round(width * out_h / height / 2) * 2)
    return out_w, max(2, out_h)


def count_frames(path: str) -> int:
    """Exact number of video frames in an mp4 (read from the container index, no decoding)."""
    streams = ffmpeg.probe(path, select_streams="v:0", count_packets=None)["streams"]
    if not streams:
        return 0
    s = streams[0]
    return int(s.get("nb_read_packets") or s.get("nb_frames") or 0)


def _run(cmd: list[str], timeout_s: float, reason: str) -> None:
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise StageError("timeout", f"ffmpeg ran past {timeout_s:.0f} s") from None
    if proc.returncode != 0:
        raise StageError(reason, f"ffmpeg exited {proc.returncode}: {_last_line(proc.stderr)}")


def _last_line(stderr: bytes | None) -> str:
    lines = [ln.strip() for ln in (stderr or b"").decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "no message"


def _float(x) -> float | None:
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def _rate(r: str | None) -> float | None:
    if not r or r in ("0/0", "0"):
        return None
    num, _, den = r.partition("/")
    try:
        value = float(num) / float(den or 1)
    except (ValueError, ZeroDivisionError):
        return None
    return value if value > 0 else None
