"""Clip stage: cut the normalised media into clips on exact frame and sample boundaries — the
windows ``stages.select`` chose (shots × speech turns × visibility) or, in fixed mode, equal
windows (``fixed_windows``). ``make_clips`` writes each clip's ``mp4`` and ``wav`` members and
returns its record; ``cut_videos`` re-encodes the windows, several per ffmpeg process (one decode).
"""

from __future__ import annotations

import os
import subprocess
import uuid
from typing import Any, NamedTuple

import numpy as np
import soundfile as sf
from pydantic import Field

from schemas import ClipRecord, ClipSync, NormalizedMedia
from schemas import shard as layout
from schemas.clip import SourceMedia
from schemas.settings import runtime_field
from schemas.source import SourceProvenance

from .audio_quality import AudioQualityOptions, audio_quality, audio_reject
from .errors import StageError
from .files import temp_name
from .normalize import normalised_to_source
from .select import SelectOptions
from .wav import map_pcm16

class ClipOptions(SelectOptions, AudioQualityOptions):
    """Options of the clip stage (config section ``clips``): selection and crop (``SelectOptions``),
    fixed windows, and how the clips are encoded."""

    mode: str = Field("selected", pattern=r"^(selected|fixed)$", description="selected: shots x speech turns x visibility; fixed: equal windows")
    window_s: float = Field(2.0, gt=0, description="clip length in fixed mode")
    min_last_clip_s: float = Field(0.0, ge=0, description="fixed mode: keep a shorter tail clip if at least this long (0: drop)")
    max_clips_per_video: int | None = Field(None, ge=1)
    crop_size: int | None = Field(None, ge=16, multiple_of=2, description="side of a cropped clip in pixels, even (default: the crop's own size)")
    crf: int = Field(20, ge=0, le=51, description="x264 quality of the cut clips")
    preset: str = "veryfast"
    encode_threads: int = Field(1, ge=1, description="one thread keeps re-cut clips byte-identical")
    keyframe_every_s: float | None = Field(2.0, gt=0, description="longest gap between keyframes of a cut clip: a "
                                           "trainer's loader seeks to the keyframe before its window instead of decoding "
                                           "from frame 0; none: x264's default (250 frames), as clips were cut before")
    cuts_per_process: int = Field(8, ge=1, description="clips one ffmpeg process cuts from a single decode of the video")
    max_gap_s: float = Field(4.0, ge=0, description="a clip starting more than this after the previous clip's end starts a new ffmpeg process (a seek instead of decoding the gap)")
    timeout_s: float = runtime_field(600.0, gt=0, description="per-clip ffmpeg time limit")


def clip_key(video_id: str, index: int) -> str:
    return f"{video_id}-{index:04d}"


def clip_uid(source_uri: str, start_s: float, end_s: float) -> str:
    """Deterministic id of a clip: the same source and times give the same id in every run."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{source_uri}#t={start_s:.3f},{end_s:.3f}"))


def fixed_windows(num_frames: int, fps: float, opts: ClipOptions) -> list[tuple[int, int]]:
    """``[(first_frame, frame_count)]`` of consecutive windows of ``opts.window_s`` over the video."""
    per = round(opts.window_s * fps)
    windows = [(i * per, per) for i in range(num_frames // per)]
    tail = num_frames - len(windows) * per
    if opts.min_last_clip_s > 0 and tail >= opts.min_last_clip_s * fps:
        windows.append((len(windows) * per, tail))
    if opts.max_clips_per_video:
        windows = windows[: opts.max_clips_per_video]
    return windows


def make_clips(
    media: NormalizedMedia,
    source_uri: str,
    out_dir: str,
    opts: ClipOptions = ClipOptions(),
    source_metadata: dict[str, Any] | None = None,
    windows: list[tuple[int, int]] | None = None,
    crops: list[tuple[int, int, int] | None] | None = None,
    crop_size: int | None = None,
    provenance: SourceProvenance | None = None,
    syncs: list[ClipSync | None] | None = None,
) -> list[ClipRecord]:
    """Cut ``media`` into ``windows`` ``[(first_frame, frame_count)]`` (default: fixed windows);
    writes ``<key>.mp4`` and ``<key>.wav`` into ``out_dir``. A crop ``(x, y, side)`` cuts a square
    from the frame, scaled to ``crop_size`` pixels. Each record carries the source's ``provenance``,
    what normalisation did to it, and the affine map from its pixels back to the coded source frame.
    A clip's ``ClipSync`` (``syncs``) with ``audio_shift_frames`` = s takes its audio from s frames
    earlier (s > 0: the audio led the lips and is delayed), silence where that runs past the file."""
    os.makedirs(out_dir, exist_ok=True)
    meta = dict(source_metadata or {})
    to_source = np.array(normalised_to_source(media) + [[0.0, 0.0, 1.0]])
    source_media = source_media_of(media)
    audio, sr = map_pcm16(media.audio_path)
    records = []
    windows = fixed_windows(media.num_frames, media.fps, opts) if windows is None else windows
    crops = crops or [None] * len(windows)
    syncs = syncs or [None] * len(windows)
    cuts: list[Cut] = []
    for index, ((first, count), crop) in enumerate(zip(windows, crops)):
        # the wav can be a few ms shorter than the video: a clip that ends on the video's last frame
        # gets those samples as silence (``_shifted``); a window far past the audio is not cut
        if round(first / media.fps * sr) + round(count / media.fps * sr) > len(audio) + round(2 * sr / media.fps):
            break
        size = (crop_size or crop[2]) if crop else None
        cuts.append(Cut(os.path.join(out_dir, layout.member_name(clip_key(media.video_id, index), layout.MP4)), first, count, crop, size))
    cut_videos(media.video_path, cuts, media.fps, opts)
    for index, (cut, sync) in enumerate(zip(cuts, syncs)):
        first, count, crop, size = cut.first_frame, cut.num_frames, cut.crop, cut.size
        start_s, end_s = first / media.fps, (first + count) / media.fps
        key = clip_key(media.video_id, index)
        s0, n = round(start_s * sr), round(count / media.fps * sr)
        shift = round(sync.audio_shift_frames / media.fps * sr) if sync else 0
        scale = crop[2] / size if crop else 1.0  # normalised pixels per clip pixel
        to_normalised = np.array([[scale, 0.0, crop[0] if crop else 0.0], [0.0, scale, crop[1] if crop else 0.0], [0.0, 0.0, 1.0]])
        _write_wav(os.path.join(out_dir, layout.member_name(key, layout.WAV)), _shifted(audio, s0 - shift, n), sr)
        records.append(
            ClipRecord(
                key=key,
                clip_uid=clip_uid(source_uri, start_s, end_s),
                video_id=media.video_id,
                index=index,
                source_uri=source_uri,
                source_metadata=meta,
                start_s=start_s,
                end_s=end_s,
                source_duration_s=media.duration_s,
                fps=media.fps,
                num_frames=count,
                sample_rate_hz=sr,
                num_audio_samples=n,
                width=size or media.width,
                height=size or media.height,
                crop_box=list(crop) if crop else None,
                language=meta.get("language"),
                # the sources file's licence column wins over what the platform states
                sync=sync,
                licence=meta.get("licence") or meta.get("license") or (provenance.platform_licence if provenance else None),
                members=list(layout.BASE_MEMBERS),
                provenance=provenance,
                source_media=source_media,
                clip_to_source=[[round(float(x), 6) for x in row] for row in (to_source @ to_normalised)[:2]],
            )
        )
    return records


def measure_audio(audio_path: str, fps: float, windows: list[tuple[int, int]], opts: ClipOptions,
                  filter_: bool) -> tuple[list[int], list[dict[str, float]], list[tuple[int, str]]]:
    """Audio figures of every window (``stages.audio_quality``) and, with ``filter_``, the windows
    that pass the audio limits: (indices kept, figures of the kept, (index, reason) of the rejected)."""
    audio, sr = map_pcm16(audio_path)
    kept, figures, rejected = [], [], []
    for i, (first, count) in enumerate(windows):
        a, b = first / fps, (first + count) / fps
        q = audio_quality(np.asarray(audio[round(a * sr): round(b * sr)]), sr, opts)
        why = audio_reject(q, opts) if filter_ else None
        if why:
            rejected.append((i, why))
            continue
        kept.append(i)
        figures.append(q)
    return kept, figures, rejected


def _shifted(audio: np.ndarray, start: int, n: int) -> np.ndarray:
    """``n`` samples from ``start`` (may be negative or run past the end: silence there)."""
    out = np.zeros((n, *audio.shape[1:]), audio.dtype)
    a, b = max(0, start), min(len(audio), start + n)
    if b > a:
        out[a - start: b - start] = audio[a:b]
    return out


def source_media_of(media: NormalizedMedia) -> SourceMedia:
    """What a clip records of its source's media and of what normalisation did to it."""
    p, d = media.source_probe, media.decisions
    return SourceMedia(
        width=p.width, height=p.height, fps=p.fps, video_codec=p.video_codec, audio_codec=p.audio_codec,
        rotation_deg=d.rotation_deg if d else 0, sample_aspect_ratio=d.sample_aspect_ratio if d else 1.0,
        interlaced=bool(d.interlaced) if d else False, deinterlaced=d.deinterlaced if d else False, tone_mapped=d.tone_mapped if d else False,
        audio_track=d.audio_track if d else 0, video_start_s=d.video_start_s if d else 0.0,
    )


class Cut(NamedTuple):
    """One clip to cut: ``num_frames`` frames from ``first_frame`` of the normalised video into ``path``;
    ``crop`` ``(x, y, side)`` a square of the frame, scaled to ``size`` pixels."""

    path: str
    first_frame: int
    num_frames: int
    crop: tuple[int, int, int] | None = None
    size: int | None = None


def group_cuts(cuts: list[Cut], fps: float, opts: ClipOptions) -> list[list[Cut]]:
    """Cuts in start order, grouped for one ffmpeg process each: at most ``opts.cuts_per_process``,
    and a gap over ``opts.max_gap_s`` between one clip's end and the next one's start splits a group
    (a seek is cheaper than decoding the gap)."""
    groups: list[list[Cut]] = []
    end = None
    for cut in sorted(cuts, key=lambda c: c.first_frame):
        if not groups or len(groups[-1]) >= opts.cuts_per_process or cut.first_frame - end > opts.max_gap_s * fps:
            groups.append([])
            end = cut.first_frame
        groups[-1].append(cut)
        end = max(end, cut.first_frame + cut.num_frames)
    return groups


def cut_videos(src: str, cuts: list[Cut], fps: float, opts: ClipOptions) -> None:
    """Re-encode each cut's exact frames (no keyframe-snapped stream copy), ``group_cuts`` at a time
    per ffmpeg process: the video is decoded once per group and ``split`` to one ``trim`` and one
    x264 encoder per clip.

    The input seek lands half a frame before the group's first frame, so that frame is the first
    one decoded whatever the float rounding of the timestamps; ``trim`` then counts frames from
    there and ``setpts`` restarts each clip at 0. (A per-clip ``-ss`` + ``-frames:v`` cut with an
    output rate, as before, was exact on the normalised video but repeated the first frame and
    dropped the last on a file that also holds audio; trim is exact on both.) The decoder runs
    single-threaded: with frame threads, frames near the end of the stream were seen to differ
    between identical runs.
    """
    for group in group_cuts(cuts, fps, opts):
        base = group[0].first_frame
        seek = max(0.0, base / fps - 0.5 / fps)
        chains = []
        outputs: list[str] = []
        tmps = [temp_name(c.path, ".mp4") for c in group]
        for i, (cut, tmp) in enumerate(zip(group, tmps)):
            a = cut.first_frame - base
            chain = f"trim=start_frame={a}:end_frame={a + cut.num_frames},setpts=PTS-STARTPTS"
            if cut.crop:
                x, y, side = cut.crop
                chain += f",crop={side}:{side}:{x}:{y},scale={cut.size or side}:{cut.size or side}:flags=lanczos"
            src_label = f"[s{i}]" if len(group) > 1 else "[0:v:0]"
            chains.append(f"{src_label}{chain}[o{i}]")
            outputs += ["-map", f"[o{i}]", "-an", "-c:v", "libx264", "-preset", opts.preset, "-crf", str(opts.crf),
                        *(["-g", str(max(1, round(opts.keyframe_every_s * fps)))] if opts.keyframe_every_s else []),
                        "-pix_fmt", "yuv420p", "-r", f"{fps:g}", "-threads", str(opts.encode_threads), "-map_metadata", "-1",
                        "-fflags", "+bitexact", "-flags:v", "+bitexact", "-movflags", "+faststart", tmp]
        if len(group) > 1:
            chains.insert(0, "[0:v:0]split=" + str(len(group)) + "".join(f"[s{i}]" for i in range(len(group))))
        cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-threads", "1", "-ss", f"{seek:.6f}", "-i", src,
               "-filter_complex", ";".join(chains), *outputs]
        names = ", ".join(os.path.basename(c.path) for c in group)
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=opts.timeout_s * len(group))
        except subprocess.TimeoutExpired:
            _remove(tmps)
            raise StageError("timeout", f"cutting {names} ran past {opts.timeout_s * len(group):.0f} s") from None
        if proc.returncode != 0:
            _remove(tmps)
            msg = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no message"]
            raise StageError("cut_failed", f"ffmpeg exited {proc.returncode} cutting {names}: {msg[0][:300]}")
        for cut, tmp in zip(group, tmps):
            os.replace(tmp, cut.path)


def _remove(paths: list[str]) -> None:
    for p in paths:
        if os.path.exists(p):
            os.remove(p)


def _write_wav(path: str, samples, sr: int) -> None:
    tmp = temp_name(path, ".wav")
    sf.write(tmp, samples, sr, subtype="PCM_16", format="WAV")
    os.replace(tmp, path)
