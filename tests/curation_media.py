"""Broadcast-curation fixtures with known answers, made with ffmpeg from the real recordings of
``media/real/`` (and the real hand photograph of ``media/hand/``), never from generated faces.

Each ``Fixture`` is made of ``Part``s (a stretch of one real recording) that say which detectors must
fire on clips of that stretch (``expect``); every other detector must stay quiet. Two clips are
copies (``duplicate``) when they show the same recording over the same time (``same_segment``). Used by ``benchmarks/curation.py`` (precision / recall per detector, subtitle CER against
the drawn text) and by ``tests/test_curation.py``.

Detectors (the curate stage's reject reasons and flags, docs/curation.md): ``text`` (burned-in text
read anywhere), ``burned_in_text`` (over the mouth: reject), ``camera_motion``, ``low_picture_quality``,
``too_dark``, ``letterboxed``, ``picture_in_picture``, ``hand_over_face``, ``subtitle_mismatch``, and
``duplicate`` (pairs across the two "episodes").
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field

from real_media import duration_s, real_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAND = os.path.join(ROOT, "media", "hand", "hands.jpg")
FONT = "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"
_ENC = ("-c:v", "libx264", "-preset", "veryfast", "-crf", "20", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k")

#: Every detector the benchmark scores.
DETECTORS = ("text", "burned_in_text", "subtitle_mismatch", "camera_motion", "low_picture_quality", "too_dark", "letterboxed",
             "picture_in_picture", "hand_over_face", "duplicate")

#: Chinese subtitle drawn under the anchor (not what they say: the transcript check must flag it).
ZH_SUBTITLE = "央视新闻联播今天播出"
#: A ticker's text and a station logo's.
TICKER = "快讯 本市今日发布暴雨蓝色预警 请市民注意出行安全"
LOGO = "CNAS 新闻"


@dataclass
class Part:
    """A stretch of a fixture file that is one recording's footage: ``recording`` from
    ``source_s`` on, between ``start_s`` and ``end_s`` of the fixture. ``expect``: the detectors
    that must fire on clips of this stretch. ``same_picture``: the picture is still the recording's
    up to re-encoding, scaling, a crop of a few percent, overlays and brightness/blur (a copy the
    duplicate detector must find); False for camera moves and letterboxing."""

    start_s: float
    end_s: float
    recording: str
    source_s: float = 0.0
    expect: frozenset[str] = frozenset()
    same_picture: bool = True
    drawn_text: str | None = None  # subtitle text drawn on it (the OCR's known answer)


@dataclass
class Fixture:
    name: str
    path: str
    parts: list[Part] = field(default_factory=list)
    note: str = ""

    def part_of(self, start_s: float, end_s: float) -> Part | None:
        """The part a clip ``[start_s, end_s)`` of this file overlaps most (None: none)."""
        best = max(self.parts, key=lambda p: min(p.end_s, end_s) - max(p.start_s, start_s))
        return best if min(best.end_s, end_s) - max(best.start_s, start_s) > 0 else None


def one_part(name: str, path: str, recording: str, expect: set[str] = frozenset(), note: str = "", same_picture: bool = True,
             drawn_text: str | None = None, source_s: float = 0.0) -> Fixture:
    return Fixture(name, path, [Part(0.0, duration_s(path), recording, source_s, frozenset(expect), same_picture, drawn_text)], note)


def _ff(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *args], check=True)


def _draw(text: str, size: int, x: str, y: str, extra: str = "") -> str:
    return (f"drawtext=fontfile={FONT}:text='{text}':fontsize={size}:fontcolor=white:box=1:boxcolor=black@0.6:"
            f"boxborderw=6:x={x}:y={y}{extra}")


def _vf(out: str, name: str, vf: str, crf: int = 20) -> str:
    enc = list(_ENC)
    enc[enc.index("-crf") + 1] = str(crf)
    _ff("-i", real_path(name), "-vf", vf, *enc, out)
    return out


def subtitle_lines_of(transcript: str, per_line: int = 28) -> list[str]:
    """A transcript broken into subtitle lines of at most ``per_line`` characters at spaces."""
    lines, cur = [], ""
    for word in transcript.split():
        if cur and len(cur) + 1 + len(word) > per_line:
            lines.append(cur)
            cur = word
        else:
            cur = f"{cur} {word}".strip()
    return lines + ([cur] if cur else [])


def make_subtitles(out: str, name: str, lines: list[str], y: str = "h-th-24", span: tuple[float, float] | None = None) -> str:
    """``lines`` shown one after another (equal shares of ``span``, default the whole recording)
    as centred subtitles."""
    t0, t1 = span or (0.0, duration_s(real_path(name)))
    step = (t1 - t0) / len(lines)
    size = max(14, round(0.045 * _height(name)))
    filters = ",".join(_draw(line.replace("'", "’").replace(":", "\\:").replace(",", "\\,"), size, "(w-text_w)/2", y,
                             f":enable='between(t\\,{t0 + i * step:.2f}\\,{t0 + (i + 1) * step - 0.04:.2f})'")
                       for i, line in enumerate(lines))
    return _vf(out, name, filters)


def _height(name: str) -> int:
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "stream=height", "-of", "csv=p=0",
                          real_path(name)], check=True, capture_output=True, text=True).stdout
    return int(out.strip())


def make_camera(out: str, name: str, kind: str) -> str:
    """A camera move applied to ``name`` (output 640²), with a known magnitude: ``zoom`` ×1 → ×2.2
    over the clip (|log scale| rate ln 2.2 / duration per s), ``pan`` (its first 3 s; a window of
    0.55 of the frame sliding 0.1 of the frame per s: 0.18 short sides per s), ``shake`` (a window of
    0.9 of the frame wobbling ±4 %, a new offset every frame)."""
    dur = duration_s(real_path(name))
    if kind == "zoom":
        # zoompan on a 4x copy: its crop offsets are whole pixels, which would otherwise read as shake
        frames = round(dur * 25)
        vf = (f"fps=25,scale=iw*4:ih*4,zoompan=z='1+1.2*on/{frames}':d=1:x='iw/2-iw/zoom/2':y='ih/2-ih/zoom/2':s=640x640:fps=25,"
              "setsar=1")
        _ff("-i", real_path(name), "-vf", vf, *_ENC, out)
    elif kind == "pan":
        vf = "crop=w='0.55*iw':h='0.55*ih':x='0.08*iw+0.1*iw*t':y='0.2*ih',scale=640:640,setsar=1"
        _ff("-i", real_path(name), "-t", "3", "-vf", vf, *_ENC, out)
    else:
        vf = "crop=w='0.9*iw':h='0.9*ih':x='0.05*iw+0.04*iw*sin(n*2.1)':y='0.05*ih+0.04*ih*cos(n*1.7)',scale=640:640,setsar=1"
        _ff("-i", real_path(name), "-vf", vf, *_ENC, out)
    return out


def make_hand_over_mouth(out: str, name: str, mouth_xy: tuple[int, int], start_s: float, end_s: float) -> str:
    """The real hand photograph (its white background keyed out) held over the mouth at ``mouth_xy``
    from ``start_s`` to ``end_s``."""
    x, y = mouth_xy
    _ff("-i", real_path(name), "-i", HAND, "-filter_complex",
        f"[1:v]crop=310:382:40:0,scale=-2:300,colorkey=white:0.25:0.1[h];"
        f"[0:v][h]overlay=x={x - 110}:y={y - 70}:enable='between(t\\,{start_s}\\,{end_s})'[v]",
        "-map", "[v]", "-map", "0:a", *_ENC, out)
    return out


def make_letterbox(out: str, name: str) -> str:
    """The picture scaled to 16:9 inside its square frame: black bars above and below."""
    return _vf(out, name, "scale=iw:ih*9/16,pad=iw:iw:0:(ow-ih)/2:black,setsar=1")


def make_pip(out: str, name: str, inset: str) -> str:
    """``inset`` (another real recording) in a white-framed window in the top-right corner."""
    _ff("-i", real_path(name), "-i", real_path(inset), "-filter_complex",
        "[1:v]scale=160:160,pad=168:168:4:4:white[i];[0:v][i]overlay=x=main_w-200:y=30:shortest=1[v]",
        "-map", "[v]", "-map", "0:a", *_ENC, out)
    return out


def make_episode(out: str, parts: list[tuple[str, str]], size: int = 480, crf: int = 20) -> str:
    """Real recordings cut together with hard cuts at ``size``² (one "episode"): ``parts`` are
    (file, extra filter) pairs, the filter applied to that part's picture before scaling."""
    inputs, chains, labels = [], [], []
    for i, (path, extra) in enumerate(parts):
        inputs += ["-i", path]
        chains.append(f"[{i}:v]fps=25,{extra + ',' if extra else ''}scale={size}:{size},setsar=1[v{i}];"
                      f"[{i}:a]aresample=16000,aformat=channel_layouts=mono[a{i}]")
        labels.append(f"[v{i}][a{i}]")
    graph = ";".join(chains) + ";" + "".join(labels) + f"concat=n={len(parts)}:v=1:a=1[v][a]"
    _ff(*inputs, "-filter_complex", graph, "-map", "[v]", "-map", "[a]", "-c:v", "libx264", "-preset", "veryfast", "-crf", str(crf),
        "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "96k", out)
    return out


def make_segment(out: str, name: str, start_s: float, end_s: float) -> str:
    _ff("-ss", f"{start_s}", "-to", f"{end_s}", "-i", real_path(name), *_ENC, out)
    return out


#: Where each recording's mouth is (median mouth box centre of the pose stage, pixels).
MOUTH = {"retalking_4": (382, 315), "retalking_1": (394, 304)}


def build_fixtures(out_dir: str, transcripts: dict[str, str] | None = None) -> list[Fixture]:
    """Every fixture into ``out_dir``. ``transcripts`` (recording -> what is said) gives the
    subtitles that match the speech; without it that fixture is left out."""
    os.makedirs(out_dir, exist_ok=True)
    p = lambda n: os.path.join(out_dir, f"{n}.mp4")  # noqa: E731
    fx = [
        one_part("sub_zh_below", make_subtitles(p("sub_zh_below"), "retalking_4", [ZH_SUBTITLE]), "retalking_4",
                 {"text", "subtitle_mismatch"}, "Chinese subtitle under the chin; not what is said", drawn_text=ZH_SUBTITLE),
        one_part("sub_over_mouth", make_subtitles(p("sub_over_mouth"), "retalking_1", [ZH_SUBTITLE], y="290", span=(2.0, 4.2)),
                 "retalking_1", {"text", "burned_in_text"}, "the subtitle across the mouth from 2 to 4.2 s (mid-frame: not read as a subtitle line)",
                 drawn_text=ZH_SUBTITLE),
        one_part("ticker", _vf(p("ticker"), "retalking_5", _draw(TICKER, 22, "w-mod(t*120\\,w+text_w)", "h-40")), "retalking_5", {"text"},
                 "scrolling ticker along the bottom"),
        one_part("logo", _vf(p("logo"), "retalking_2", _draw(LOGO, 30, "30", "30")), "retalking_2", {"text"}, "station logo top left"),
        one_part("zoom", make_camera(p("zoom"), "retalking_2", "zoom"), "retalking_2", {"camera_motion"}, "zoom ×1 → ×2.2",
                 same_picture=False),
        one_part("pan", make_camera(p("pan"), "retalking_2", "pan"), "retalking_2", {"camera_motion"}, "pan, 0.18 short sides/s",
                 same_picture=False),
        one_part("shake", make_camera(p("shake"), "retalking_1", "shake"), "retalking_1", {"camera_motion", "head_motion"},
                 "±4 % shake (the head shakes in the frame with it)",
                 same_picture=False),
        one_part("hand", make_hand_over_mouth(p("hand"), "retalking_4", MOUTH["retalking_4"], 2.0, 4.0), "retalking_4",
                 {"hand_over_face"}, "a real hand over the mouth for 2 of 6.6 s"),
        one_part("blur", _vf(p("blur"), "retalking_1", "gblur=sigma=2.5"), "retalking_1", {"low_picture_quality"},
                 "Gaussian blur σ 2.5 px (σ 5 is the pose stage's motion_blur already)"),
        one_part("compressed", _vf(p("compressed"), "retalking_4", "null", crf=46), "retalking_4", {"low_picture_quality"},
                 "H.264 at CRF 46 (blocking, smeared detail)"),
        one_part("dark", _vf(p("dark"), "retalking_2", "eq=brightness=-0.19"), "retalking_2", {"too_dark"},
                 "darkened to mean luma ~45 (darker loses the face sharpness the pose stage's motion_blur asks)"),
        one_part("letterbox", make_letterbox(p("letterbox"), "retalking_1"), "retalking_1", {"letterboxed"}, "16:9 in a square frame",
                 same_picture=False),
        one_part("pip", make_pip(p("pip"), "retalking_4", "vox_00086"), "retalking_4", {"picture_in_picture"},
                 "a second speaker in an inset"),
    ]
    if transcripts and "retalking_2" in transcripts:
        lines = subtitle_lines_of(transcripts["retalking_2"])
        fx.append(one_part("sub_en_match", make_subtitles(p("sub_en_match"), "retalking_2", lines), "retalking_2", {"text"},
                           "English subtitles of what is said", drawn_text=" ".join(lines)))
    # rebroadcast: the same segment in two episodes, re-encoded, scaled, cropped 4 % and with a logo
    d98, d4, d473 = (duration_s(real_path(n)) for n in ("vox_00098", "retalking_4", "vox_00473"))
    ep1 = make_episode(p("episode1"), [(real_path("vox_00098"), ""), (real_path("retalking_4"), "")])
    copy = "crop=iw*0.96:ih*0.96:iw*0.02:ih*0.02," + _draw(LOGO, 28, "20", "20")
    ep2 = make_episode(p("episode2"), [(real_path("retalking_4"), copy), (real_path("vox_00473"), "")], size=400, crf=30)
    fx += [Fixture("episode1", ep1, [Part(0.0, d98, "vox_00098"), Part(d98, d98 + d4, "retalking_4")], "vox_00098 then retalking_4"),
           Fixture("episode2", ep2, [Part(0.0, d4, "retalking_4", expect=frozenset({"text"})), Part(d4, d4 + d473, "vox_00473")],
                   "retalking_4 again (CRF 30, 400², cropped 4 %, logo), then vox_00473")]
    # one anchor, two different segments: not duplicates
    fx += [one_part("segment_a", make_segment(p("segment_a"), "vox_00104", 0.0, 6.0), "vox_00104", note="vox_00104 0-6 s"),
           one_part("segment_b", make_segment(p("segment_b"), "vox_00104", 6.0, 11.9), "vox_00104", note="vox_00104 6-11.9 s",
                    source_s=6.0)]
    return fx


#: Real recordings with burned-in text of their own (what OCR must find on untouched footage).
REAL_TEXT = {"vox_00015": "a station logo (BBC ONE) in the bottom-left corner"}


def real_fixtures() -> list[Fixture]:
    """The vendored real recordings as they are: no detector may fire, except ``text`` where the
    broadcast itself carries text (``REAL_TEXT``)."""
    names = sorted(os.path.splitext(f)[0] for f in os.listdir(os.path.join(ROOT, "media", "real")) if f.endswith(".mp4"))
    return [one_part(n, real_path(n), n, {"text"} if n in REAL_TEXT else set(), "untouched real recording") for n in names]


def same_segment(a: tuple[Fixture, float, float], b: tuple[Fixture, float, float]) -> bool | None:
    """Whether two clips (fixture, start, end) are copies of one piece of a recording: True when
    both show the same recording's picture over overlapping recording time, False when they do not
    share recording time, None (not scored) when they share it but one picture was re-framed
    (camera move, letterbox)."""
    (fa, a0, a1), (fb, b0, b1) = a, b
    pa, pb = fa.part_of(a0, a1), fb.part_of(b0, b1)
    if pa is None or pb is None or pa.recording != pb.recording:
        return False
    ra = (a0 - pa.start_s + pa.source_s, a1 - pa.start_s + pa.source_s)
    rb = (b0 - pb.start_s + pb.source_s, b1 - pb.start_s + pb.source_s)
    overlap = min(ra[1], rb[1]) - max(ra[0], rb[0])
    if overlap < 0.5 * min(ra[1] - ra[0], rb[1] - rb[0]):
        return False
    return True if pa.same_picture and pb.same_picture else None
