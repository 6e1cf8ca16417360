"""Normalize stage: probe with ffprobe, reject unusable inputs, transcode to the dataset's media format.

Output: ``video.mp4`` (H.264 yuv420p 8-bit BT.709, constant ``fps``, square pixels, upright, height
capped, no audio track) and ``audio.wav`` (mono 16-bit PCM at ``sample_rate_hz``) in ``out_dir``,
both starting at the source presentation time of the first video frame. Ray-free.

What real uploads do and what is done about it (docs/normalize.md has the table):

* display matrix (phones): ffmpeg rotates the frames; the output size is computed from the
  *displayed* size, not the coded one;
* non-square pixels (SAR, anamorphic SD/HDV): the scale undoes the pixel aspect; ``setsar=1``;
* stream start offsets: audio is padded with silence or trimmed so that sample 0 is at the time of
  video frame 0;
* video and audio of different lengths: both are cut to the common span when they differ by at
  most ``max_av_length_diff_s``, else the video is rejected (``av_length_mismatch``);
* interlaced sources: ``idet`` on a sample of frames; ``bwdif`` when most of them are interlaced;
* VFR and 29.97/30/50/60 fps: the ``fps`` filter resamples to constant ``fps`` by timestamp;
* 10-bit and HDR (PQ/HLG): converted to 8-bit; HDR is tone-mapped to BT.709 (zscale + tonemap);
* several audio tracks: the one tagged with the source's language, else the first;
* a dead stereo channel: left out of the mono mix instead of halving the level.

Every decision is recorded in ``NormalizedMedia.decisions``.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Sequence

import ffmpeg
import numpy as np
import soundfile as sf
from pydantic import Field, ValidationError

from schemas import NormalizedMedia, ProbeInfo
from schemas.media import AudioTrack, NormalizeDecisions
from schemas.settings import Settings, runtime_field

from .errors import StageError
from .files import temp_name

VIDEO_NAME, AUDIO_NAME = "video.mp4", "audio.wav"

#: ISO 639 codes that name the same language in stream tags (639-1, 639-2/B, 639-2/T, 639-3).
LANGUAGE_ALIASES: dict[str, set[str]] = {
    "zh": {"zh", "chi", "zho", "cmn", "yue", "chs", "cht"}, "en": {"en", "eng"}, "ja": {"ja", "jpn"}, "ko": {"ko", "kor"},
    "fr": {"fr", "fre", "fra"}, "de": {"de", "ger", "deu"}, "es": {"es", "spa"}, "ru": {"ru", "rus"}, "ar": {"ar", "ara"},
    "pt": {"pt", "por"}, "it": {"it", "ita"},
}
HDR_TRANSFERS = ("smpte2084", "arib-std-b67")

#: ffmpeg demuxers an input may be opened with: single-file containers that never open another file
#: or URL. Playlists and references (hls, concat, dash, image2, ...) are refused as ``unsafe_container``:
#: a downloaded body that is an HLS or ffconcat playlist would make ffprobe/ffmpeg read local files.
SAFE_CONTAINERS = ("mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm", "mpegts", "flv", "avi", "mpeg", "asf",
                   "ogg", "aac", "mp3", "wav", "flac")
#: How playlists and manifests begin (after a BOM and blanks), checked before any ffmpeg sees the file.
_PLAYLIST_MAGIC = (b"#extm3u", b"ffconcat", b"#ext-x-", b"<?xml", b"<mpd", b"<smil")


class NormalizeOptions(Settings):
    """Options of the normalize stage (config section ``normalize``)."""

    fps: int = Field(25, ge=1)
    max_height: int = Field(1080, ge=64, description="output height cap (displayed height, after rotation)")
    sample_rate_hz: int = Field(16000, ge=8000)
    min_duration_s: float = Field(2.0, ge=0)
    max_duration_s: float = Field(4 * 3600.0, gt=0)
    max_av_length_diff_s: float = Field(2.0, ge=0, description="video and audio may end this far apart on the presentation timeline (cut to the common end); more is av_length_mismatch")
    deinterlace: str = Field("auto", pattern=r"^(auto|always|never)$", description="auto: bwdif when idet finds most sampled frames interlaced")
    interlace_sample_frames: int = Field(100, ge=10, description="frames idet looks at (from 10 % into the video)")
    interlaced_share: float = Field(0.5, gt=0, le=1, description="share of decided sampled frames that must be interlaced to deinterlace")
    dead_channel_db: float = Field(-30.0, lt=0, description="a channel this far below the loudest is dead and left out of the mono mix")
    passthrough: bool = Field(True, description="copy the video stream, not re-encode it, when it is already what normalisation would make (H.264 yuv420p 8-bit, constant fps, upright, square pixels, progressive, SDR, within max_height, starting with the audio)")
    crf: int = Field(20, ge=0, le=51)
    preset: str = "veryfast"
    # x264 with frame threads was seen to encode the last frames differently between identical runs;
    # one thread per encode keeps re-runs byte-identical (parallelism comes from Ray, across videos).
    encode_threads: int = Field(1, ge=1)
    timeout_s: float = runtime_field(3600.0, gt=0, description="per-video ffmpeg time limit")
    # Inputs outside the list are refused (reason unsafe_container) before any ffmpeg opens them; what
    # is written for an accepted input does not depend on it, so it is not in the resume fingerprint.
    allowed_containers: list[str] = runtime_field(list(SAFE_CONTAINERS), min_length=1, description="ffmpeg demuxers an input may be opened with (ffprobe/ffmpeg -format_whitelist, -protocol_whitelist file); playlists (hls, concat) are never opened")


# ---------------------------------------------------------------------------------------------
# probing


def input_args(path: str, containers: Sequence[str] = SAFE_CONTAINERS) -> list[str]:
    """ffmpeg/ffprobe options that open ``path`` as one local file with a demuxer of ``containers``
    (nothing it refers to is opened: no other protocol than ``file``, no playlist demuxer), then the path."""
    return ["-format_whitelist", ",".join(containers), "-protocol_whitelist", "file", "-i", _file_url(path)]


def check_container(path: str, containers: Sequence[str] = SAFE_CONTAINERS) -> None:
    """Raise ``StageError('unsafe_container', …)`` when ``path`` is a playlist or manifest (by its
    first bytes) or ffprobe would open it with a demuxer outside ``containers``. A file ffprobe cannot
    parse passes (the probe reports it); nothing the file refers to is ever opened."""
    _sniff(path)
    try:
        proc = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=format_name", "-of", "json",
                               *input_args(path, containers)], stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise StageError("unreadable", f"ffprobe ran past 120 s on {os.path.basename(path)}") from None
    if proc.returncode != 0:
        _raise_if_not_whitelisted(path, proc.stderr, containers)


def _sniff(path: str) -> None:
    with open(path, "rb") as f:
        head = f.read(512)
    start = head.removeprefix(b"\xef\xbb\xbf").lstrip().lower()
    for magic in _PLAYLIST_MAGIC:
        if start.startswith(magic):
            raise StageError("unsafe_container", f"{os.path.basename(path)} is a playlist or manifest ({magic.decode()}...), "
                                                 "not a media file: refused (ffmpeg would open the files it lists)")


def _raise_if_not_whitelisted(path: str, stderr: bytes | None, containers: Sequence[str]) -> None:
    text = (stderr or b"").decode("utf-8", "replace")
    if "not on whitelist" in text:
        m = re.search(r"\[(\w[\w,]*) @ [^]]*\] Format not on whitelist", text)
        name = m.group(1) if m else "an unlisted demuxer"
        raise StageError("unsafe_container", f"{os.path.basename(path)} would be opened as {name}, which is not an allowed "
                                             f"container ({','.join(containers)}): refused")


def _file_url(path: str) -> str:
    # "file:" keeps a name with a colon (e.g. "concat:a|b", "subfile,...") from being read as a protocol
    return "file:" + path


def probe(path: str, containers: Sequence[str] = SAFE_CONTAINERS) -> ProbeInfo:
    """ffprobe ``path`` (as a local file with a demuxer of ``containers``). Raises
    ``StageError('unreadable', …)`` when ffprobe cannot parse it, ``unsafe_container`` when it is a
    playlist or another container outside ``containers`` (nothing it refers to is opened)."""
    if not os.path.exists(path):
        raise StageError("not_found", f"no such file: {path}")
    size = os.path.getsize(path)
    if size == 0:
        raise StageError("empty_file", f"{path} is empty (0 bytes)")
    _sniff(path)
    try:
        info = ffmpeg.probe(_file_url(path), format_whitelist=",".join(containers), protocol_whitelist="file")
    except ffmpeg.Error as e:
        _raise_if_not_whitelisted(path, e.stderr, containers)
        # ffprobe names the input as it was given; the record keeps the plain path, as before the file: URL
        message = _last_line(e.stderr).replace(_file_url(path), path)
        raise StageError("unreadable", f"ffprobe cannot read {os.path.basename(path)}: {message}") from None
    streams = info.get("streams", [])
    # Cover art in audio files shows up as a one-frame video stream; it is not video.
    video = [s for s in streams if s.get("codec_type") == "video" and not s.get("disposition", {}).get("attached_pic")]
    audio = [s for s in streams if s.get("codec_type") == "audio"]
    fmt = info.get("format", {})
    durations = [_float(fmt.get("duration"))] + [_float(s.get("duration")) for s in video + audio]
    duration = max((d for d in durations if d is not None), default=0.0)
    v = video[0] if video else {}
    a = audio[0] if audio else {}
    w, h = v.get("width") or None, v.get("height") or None
    sar = _ratio(v.get("sample_aspect_ratio")) or 1.0
    rotation = _rotation(v)
    disp_w, disp_h = display_size(w, h, sar, rotation) if w and h else (None, None)
    r, avg = _rate(v.get("r_frame_rate")), _rate(v.get("avg_frame_rate"))
    try:
        return ProbeInfo(
            duration_s=duration,
            has_video=bool(video),
            has_audio=bool(audio),
            width=w,
            height=h,
            fps=avg or r,
            video_codec=v.get("codec_name"),
            audio_codec=a.get("codec_name"),
            audio_sample_rate_hz=_int(a.get("sample_rate")),
            format_name=fmt.get("format_name"),
            size_bytes=size,
            sample_aspect_ratio=sar,
            rotation_deg=rotation,
            display_width=disp_w,
            display_height=disp_h,
            variable_frame_rate=bool(r and avg and abs(r - avg) > 0.01 * r),
            pix_fmt=v.get("pix_fmt"),
            bit_depth=_bit_depth(v),
            color_transfer=v.get("color_transfer"),
            field_order=v.get("field_order"),
            video_start_s=_float(v.get("start_time")),
            video_duration_s=_stream_duration(v) if v else None,
            format_start_s=_float(fmt.get("start_time")) or 0.0,
            audio_tracks=[
                AudioTrack(index=i, language=(s.get("tags") or {}).get("language"), codec=s.get("codec_name"), channels=s.get("channels") or None,
                           sample_rate_hz=_int(s.get("sample_rate")), start_s=_float(s.get("start_time")), duration_s=_stream_duration(s))
                for i, s in enumerate(audio)
            ],
        )
    except ValidationError as e:  # ffprobe reported something no media file has (e.g. 0 Hz audio): the input is broken
        raise StageError("unreadable", f"ffprobe gave inconsistent stream data for {os.path.basename(path)}: "
                                       f"{' '.join(str(e).split())[:300]}") from None


def display_size(width: int, height: int, sar: float, rotation_deg: int) -> tuple[int, int]:
    """What a player shows: the coded size stretched by the pixel aspect, then rotated."""
    w, h = max(1, round(width * sar)), height
    return (h, w) if rotation_deg in (90, 270) else (w, h)


def check_usable(p: ProbeInfo, opts: NormalizeOptions) -> None:
    """Raise ``StageError`` with the reason a probed input cannot become a sample."""
    if not p.has_video:
        raise StageError("no_video", "the input has no video stream")
    if not p.has_audio:
        raise StageError("no_audio", "the input has no audio stream (speech is required)")
    if p.duration_s < opts.min_duration_s:
        raise StageError("too_short", f"duration {p.duration_s:.2f} s < min {opts.min_duration_s} s")
    if p.duration_s > opts.max_duration_s:
        raise StageError("too_long", f"duration {p.duration_s:.0f} s > max {opts.max_duration_s:.0f} s")


def choose_audio_track(p: ProbeInfo, language: str | None) -> tuple[AudioTrack, str]:
    """The audio track tagged with ``language`` (any ISO 639 spelling), else the first; and why."""
    if language:
        names = LANGUAGE_ALIASES.get(language.lower().split("-")[0], {language.lower()})
        for track in p.audio_tracks:
            if track.language and track.language.lower() in names:
                return track, "language"
    return p.audio_tracks[0], "first"


def detect_interlace(path: str, p: ProbeInfo, opts: NormalizeOptions) -> dict[str, int]:
    """``idet`` counts (multi-frame detection) on ``interlace_sample_frames`` frames from 10 % into the video."""
    start = 0.1 * (p.video_duration_s or p.duration_s)
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "info", "-threads", "1", "-ss", f"{start:.3f}",
           *input_args(path, opts.allowed_containers),
           "-map", "0:V:0", "-vf", "idet", "-frames:v", str(opts.interlace_sample_frames), "-an", "-f", "null", "-"]
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=opts.timeout_s)
    except subprocess.TimeoutExpired:
        raise StageError("timeout", f"interlace detection ran past {opts.timeout_s:.0f} s") from None
    found = re.findall(r"Multi frame detection: TFF:\s*(\d+) BFF:\s*(\d+) Progressive:\s*(\d+) Undetermined:\s*(\d+)",
                       proc.stderr.decode("utf-8", "replace"))
    if not found:
        return {}
    tff, bff, prog, und = (int(x) for x in found[-1])
    return {"tff": tff, "bff": bff, "progressive": prog, "undetermined": und}


def is_interlaced(counts: dict[str, int], share: float) -> bool:
    decided = counts.get("tff", 0) + counts.get("bff", 0) + counts.get("progressive", 0)
    return decided > 0 and (counts.get("tff", 0) + counts.get("bff", 0)) / decided >= share


def conformant(p: ProbeInfo, opts: NormalizeOptions, out_w: int, out_h: int, deinterlace: bool, tone_map: bool,
               v0: float, a0: float) -> bool:
    """Whether the source's video already is what the transcode would produce, so a stream copy
    gives the same frames: H.264 8-bit yuv420p at exactly ``opts.fps`` (constant), upright, square
    pixels, progressive, SDR, at its output size, and starting on the file's start with the audio
    (no offset to pad or trim)."""
    return (p.video_codec == "h264" and p.pix_fmt == "yuv420p" and (p.bit_depth in (None, 8)) and p.fps is not None
            and abs(p.fps - opts.fps) < 1e-6 and not p.variable_frame_rate and p.rotation_deg == 0
            and abs(p.sample_aspect_ratio - 1.0) < 1e-6 and not deinterlace and not tone_map
            and (p.width, p.height) == (out_w, out_h) and abs(v0 - p.format_start_s) < 1e-3 and abs(a0 - v0) < 1e-3)


def stream_spans(p: ProbeInfo, track: AudioTrack) -> tuple[float, float, float, float]:
    """(video start, video end, audio start, audio end) on the source's presentation timeline."""
    v0 = p.video_start_s if p.video_start_s is not None else p.format_start_s
    v1 = v0 + (p.video_duration_s if p.video_duration_s is not None else p.duration_s - (v0 - p.format_start_s))
    a0 = track.start_s if track.start_s is not None else p.format_start_s
    a1 = a0 + (track.duration_s if track.duration_s is not None else p.duration_s - (a0 - p.format_start_s))
    return v0, v1, a0, a1


# ---------------------------------------------------------------------------------------------
# the stage


def normalize(video_id: str, src_path: str, out_dir: str, opts: NormalizeOptions = NormalizeOptions(),
              language: str | None = None) -> NormalizedMedia:
    """Probe, check and transcode ``src_path`` into ``out_dir``; returns the normalised media record.

    ``language`` (the source's, from the sources file) picks the audio track when there are several.
    Video: first video stream, upright (display matrix), square pixels, deinterlaced when
    interlaced, 8-bit BT.709, constant ``opts.fps`` (frames dropped/duplicated by the ``fps`` filter,
    not snapped to keyframes), displayed height capped at ``opts.max_height``, even dimensions,
    bit-exact flags so re-runs produce identical bytes. Audio: the chosen track, aligned to the first
    video frame, live channels averaged to mono, resampled to ``opts.sample_rate_hz``.
    """
    p = probe(src_path, opts.allowed_containers)
    check_usable(p, opts)
    track, track_reason = choose_audio_track(p, language)
    v0, v1, a0, a1 = stream_spans(p, track)
    video_len, audio_len = v1 - v0, a1 - a0
    # A late or early start is an offset (padded or trimmed below, whatever its size); streams that
    # end apart are cut to the common end, within a limit: beyond it the file is likely truncated.
    if abs(v1 - a1) > opts.max_av_length_diff_s:
        raise StageError("av_length_mismatch", f"video {video_len:.2f} s ({v0:.2f}-{v1:.2f}), audio {audio_len:.2f} s ({a0:.2f}-{a1:.2f}): "
                         f"they end {abs(v1 - a1):.2f} s apart > normalize.max_av_length_diff_s={opts.max_av_length_diff_s}")
    out_len = min(v1, a1) - v0
    if out_len < opts.min_duration_s:
        raise StageError("too_short", f"video and audio overlap for {out_len:.2f} s < min {opts.min_duration_s} s")
    counts = detect_interlace(src_path, p, opts) if opts.deinterlace == "auto" else {}
    interlaced = is_interlaced(counts, opts.interlaced_share) if opts.deinterlace == "auto" else None
    deinterlace = opts.deinterlace == "always" or (opts.deinterlace == "auto" and interlaced)
    tone_map = (p.color_transfer or "") in HDR_TRANSFERS
    disp_w, disp_h = p.display_width or p.width or 2, p.display_height or p.height or 2
    out_w, out_h = target_size(disp_w, disp_h, opts.max_height)
    channels = track.channels or 1

    os.makedirs(out_dir, exist_ok=True)
    video_out, audio_out = os.path.join(out_dir, VIDEO_NAME), os.path.join(out_dir, AUDIO_NAME)
    video_tmp, audio_tmp = temp_name(video_out, ".mp4"), temp_name(audio_out, ".wav")
    # Filter timestamps are the source's minus the file's start time; frame 0 is the first video frame.
    start_rel = max(0.0, v0 - p.format_start_s)
    vf = ["setpts=PTS-STARTPTS"] + (["bwdif=mode=send_frame:parity=auto:deint=all"] if deinterlace else [])
    if tone_map:
        vf += ["zscale=t=linear:npl=100", "format=gbrpf32le", "zscale=p=bt709", "tonemap=tonemap=hable:desat=0",
               "zscale=t=bt709:m=bt709:r=tv"]
    vf += [f"fps={opts.fps}:round=near", f"scale={out_w}:{out_h}", "setsar=1", "format=yuv420p"]
    # aresample pads silence up to t=0 when the audio starts late; atrim drops what precedes frame 0.
    # apad: an audio stream shorter than its metadata says is filled with silence up to -t (checked below).
    af = [f"aresample={opts.sample_rate_hz}:async=1:first_pts=0", f"atrim=start={start_rel:.6f}", "asetpts=PTS-STARTPTS", "apad"]
    mono = channels == 1
    if not mono and channels > 2:
        af.append("aformat=channel_layouts=stereo")  # 5.1 and up: swresample's standard stereo downmix first
    copy = opts.passthrough and conformant(p, opts, out_w, out_h, deinterlace, tone_map, v0, a0)
    if copy:  # nothing to change in the pictures: copy the stream (no decode, no encode), cut at out_len
        video = ["-map", "0:V:0", "-t", f"{out_len:.6f}", "-c:v", "copy"]
        graph = f"[0:a:{track.index}]{','.join(af)}[a]"
    else:
        # V: video streams that are not cover art (an MKV may store a picture first)
        video = ["-map", "[v]", "-t", f"{out_len:.6f}", "-c:v", "libx264", "-preset", opts.preset, "-crf", str(opts.crf),
                 "-pix_fmt", "yuv420p", "-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709",
                 "-r", str(opts.fps), "-threads", str(opts.encode_threads)]
        graph = f"[0:V:0]{','.join(vf)}[v];[0:a:{track.index}]{','.join(af)}[a]"
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-threads", "1", *input_args(src_path, opts.allowed_containers),
           "-filter_complex", graph, *video, "-movflags", "+faststart", "-map_metadata", "-1",
           "-fflags", "+bitexact", "-flags:v", "+bitexact", "-f", "mp4", video_tmp,
           "-map", "[a]", "-t", f"{out_len:.6f}", "-c:a", "pcm_s16le", "-ac", "1" if mono else "2", "-map_metadata", "-1",
           "-fflags", "+bitexact", "-f", "wav", audio_tmp]
    try:
        _run(cmd, opts.timeout_s, "transcode_failed")
        used = [0] if mono else mix_live_channels(audio_tmp, opts.dead_channel_db)
        os.replace(video_tmp, video_out)
        os.replace(audio_tmp, audio_out)
    finally:  # a timeout (ffmpeg killed) or a failure leaves no partial file behind
        _remove(video_tmp, audio_tmp)

    out_probe = _video_stream(video_out)  # packet count (= frames in our mp4) and size
    num_frames = int(out_probe.get("nb_read_packets") or out_probe.get("nb_frames") or 0)
    audio_info = sf.info(audio_out)
    if num_frames == 0 or audio_info.frames == 0:
        raise StageError("decode_failed", f"transcode produced {num_frames} frames and {audio_info.frames} audio samples")
    if abs(num_frames / opts.fps - audio_info.frames / audio_info.samplerate) > 1.0:  # the streams were shorter than stated
        raise StageError("av_length_mismatch", f"decoded video {num_frames / opts.fps:.2f} s and audio "
                         f"{audio_info.frames / audio_info.samplerate:.2f} s disagree with the probed {out_len:.2f} s")
    if copy and num_frames != round(out_len * opts.fps):  # the copy must hold exactly the frames a re-encode would
        return normalize(video_id, src_path, out_dir, opts.model_copy(update={"passthrough": False}), language)
    decisions = NormalizeDecisions(
        rotation_deg=p.rotation_deg, sample_aspect_ratio=p.sample_aspect_ratio, display_width=disp_w, display_height=disp_h,
        interlace_frames=counts, interlaced=interlaced, deinterlaced=deinterlace, source_bit_depth=p.bit_depth,
        tone_mapped=tone_map, variable_frame_rate=p.variable_frame_rate, source_fps=p.fps, audio_track=track.index,
        audio_track_language=track.language, audio_track_reason=track_reason, audio_channels_used=used,
        video_start_s=round(v0, 6), audio_offset_s=round(a0 - v0, 6), video_length_s=round(video_len, 6),
        audio_length_s=round(audio_len, 6), video_copied=copy,
        # a stream lost more than half a frame at its end to the common span
        trimmed_to_s=round(out_len, 6) if max(v1, a1) - min(v1, a1) > 0.5 / opts.fps else None,
    )
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
        decisions=decisions,
    )


def mix_live_channels(path: str, dead_db: float, block: int = 1 << 20) -> list[int]:
    """Rewrite the multi-channel wav at ``path`` as mono: the mean of the channels within ``dead_db``
    of the loudest (a dead or near-silent channel would otherwise halve the level). Two passes over
    blocks, so hours of audio stay out of memory. Returns the channels used."""
    info = sf.info(path)
    energy = np.zeros(info.channels)
    for chunk in sf.blocks(path, blocksize=block, dtype="float64", always_2d=True):
        energy += (chunk ** 2).sum(axis=0)
    level_db = 10 * np.log10(energy / max(info.frames, 1) + 1e-20)
    used = [int(c) for c in np.flatnonzero(level_db >= level_db.max() + dead_db)]
    tmp = temp_name(path, ".wav")
    try:
        with sf.SoundFile(tmp, "w", samplerate=info.samplerate, channels=1, subtype="PCM_16", format="WAV") as out:
            for chunk in sf.blocks(path, blocksize=block, dtype="int16", always_2d=True):
                out.write(np.round(chunk[:, used].astype(np.float64).mean(axis=1)).astype(np.int16))
        os.replace(tmp, path)
    finally:
        _remove(tmp)
    return used


def normalised_to_source(media: NormalizedMedia) -> list[list[float]]:
    """2x3 affine mapping a pixel (x, y) of the normalised video to the coded source frame: the
    scale to the displayed size, then the display rotation and the pixel aspect undone."""
    d = media.decisions
    p = media.source_probe
    if d is None or not p.width or not p.height:
        return [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    sx, sy = d.display_width / media.width, d.display_height / media.height  # normalised -> displayed
    W, H = p.width * d.sample_aspect_ratio, float(p.height)  # the upright, square-pixel source before rotation
    # displayed (dx, dy) -> square-pixel source (u, v), for a clockwise display rotation
    rot = {0: ((1, 0, 0), (0, 1, 0)), 90: ((0, 1, 0), (-1, 0, H)), 180: ((-1, 0, W), (0, -1, H)), 270: ((0, -1, W), (1, 0, 0))}
    (a, b, c), (e, f, g) = rot.get(d.rotation_deg, rot[0])
    # compose: normalised -> displayed (scale) -> square source (rotation) -> coded (undo the pixel aspect)
    row_u = [a * sx, b * sy, c]
    row_v = [e * sx, f * sy, g]
    return [[row_u[0] / d.sample_aspect_ratio, row_u[1] / d.sample_aspect_ratio, row_u[2] / d.sample_aspect_ratio], row_v]


def target_size(width: int, height: int, max_height: int) -> tuple[int, int]:
    """Output (width, height): height capped at ``max_height``, aspect kept, both even (yuv420p needs it)."""
    out_h = min(height, max_height) // 2 * 2
    out_w = max(2, round(width * out_h / height / 2) * 2)
    return out_w, max(2, out_h)


def _video_stream(path: str) -> dict:
    """Frame count and size of the first video stream of ``path``, read in-process with PyAV from the
    container's index (an mp4's sample table: no decoding, no ffprobe process); a container without
    a count has its packets counted."""
    import av

    with av.open(path) as container:
        if not container.streams.video:
            return {}
        stream = container.streams.video[0]
        frames = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
        return {"nb_read_packets": frames, "width": stream.codec_context.width, "height": stream.codec_context.height}


def count_frames(path: str) -> int:
    """Exact number of video frames in an mp4 (read from the container index, no decoding)."""
    s = _video_stream(path)
    return int(s.get("nb_read_packets") or s.get("nb_frames") or 0)


def _run(cmd: list[str], timeout_s: float, reason: str) -> None:
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise StageError("timeout", f"ffmpeg ran past {timeout_s:.0f} s") from None
    if proc.returncode != 0:
        raise StageError(reason, f"ffmpeg exited {proc.returncode}: {_last_line(proc.stderr)}")


def _remove(*paths: str) -> None:
    for path in paths:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


def _last_line(stderr: bytes | None) -> str:
    lines = [ln.strip() for ln in (stderr or b"").decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "no message"


def _float(x) -> float | None:
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def _int(x) -> int | None:
    """A positive integer field of ffprobe's output, else None (it writes "0" for unknown)."""
    try:
        return int(x) or None
    except (TypeError, ValueError):
        return None


def _stream_duration(stream: dict) -> float | None:
    """A stream's duration: ffprobe's ``duration``, else Matroska/WebM's ``DURATION`` tag (HH:MM:SS.fffffffff)."""
    d = _float(stream.get("duration"))
    if d is not None:
        return d
    tag = (stream.get("tags") or {}).get("DURATION") or (stream.get("tags") or {}).get("duration")
    m = re.match(r"^(\d+):(\d+):(\d+(?:\.\d+)?)$", tag or "")
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3)) if m else None


def _ratio(r: str | None) -> float | None:
    """'4:3' or '4/3' -> 1.333; None for absent or zero (ffprobe writes 0:1 for 'unknown')."""
    if not r:
        return None
    num, _, den = r.replace(":", "/").partition("/")
    try:
        value = float(num) / float(den or 1)
    except (ValueError, ZeroDivisionError):
        return None
    return value if value > 0 else None


def _rate(r: str | None) -> float | None:
    if not r or r in ("0/0", "0"):
        return None
    return _ratio(r)


def _rotation(stream: dict) -> int:
    """Clockwise display rotation in degrees (0/90/180/270) from the display matrix side data
    (ffprobe states it counter-clockwise) or an old-style ``rotate`` tag (clockwise)."""
    for side in stream.get("side_data_list") or []:
        if "rotation" in side:
            return int(round(-float(side["rotation"]) / 90.0)) * 90 % 360
    tag = (stream.get("tags") or {}).get("rotate")
    return int(round(float(tag) / 90.0)) * 90 % 360 if tag else 0


def _bit_depth(stream: dict) -> int | None:
    raw = stream.get("bits_per_raw_sample")
    if raw and str(raw).isdigit():
        return int(raw)
    m = re.search(r"p(\d+)(le|be)$", stream.get("pix_fmt") or "")
    return int(m.group(1)) if m else (8 if stream.get("pix_fmt") else None)
