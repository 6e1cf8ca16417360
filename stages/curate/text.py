"""Burned-in text: subtitles, lower-thirds, tickers and logos read with PP-OCR, and the subtitles as a
second transcript.

``TextReader`` runs rapidocr's PP-OCR detector and recogniser (ONNX models inside the rapidocr
wheel, onnxruntime on CPU) on sampled full frames of the normalised video, so text outside the crop
(a subtitle under the anchor) is read too. ``place_boxes`` says where each line sits against the
clip's crop and the speaker's mouth. ``subtitle_lines`` keeps the lines a subtitle is made of
(centred, in the lower part of the frame) and ``subtitle_cer`` compares them with the ASR transcript
after normalising script (traditional → simplified, OpenCC), numerals (cn2an) and punctuation.
"""

from __future__ import annotations

import functools
import unicodedata

import numpy as np

from schemas.curation import TextBox

#: Tallest text line kept, as a share of the frame height: a burned-in line (subtitle, ticker, logo)
#: is a few percent of it; taller "lines" were single characters read into a face (VoxCeleb2 clips).
MAX_LINE_HEIGHT = 0.15
#: Long side of the image PP-OCR's detector sees (larger frames are scaled down for detection only;
#: recognition reads the original pixels). Detection is most of OCR's cost: docs/curation.md.
DETECT_SIDE = 640
#: Where a subtitle line sits: centred (within this share of the width), in the lower part of the
#: frame, clear of its left and right edges (a ticker enters and leaves at an edge and is centred
#: only in passing).
SUBTITLE_CENTRE_TOLERANCE = 0.06
SUBTITLE_MIN_Y = 0.55
SUBTITLE_EDGE_MARGIN = 0.01


class TextReader:
    """PP-OCR (detection + recognition) through rapidocr; the models load once per process."""

    def __init__(self, threads: int = 1):
        from rapidocr import RapidOCR

        # no angle classifier: burned-in broadcast text is upright; images larger than DETECT_SIDE
        # are scaled down for detection, smaller ones are not scaled up (``limit_type: max``)
        self.engine = RapidOCR(params={"Global.log_level": "error", "Global.use_cls": False,
                                       "Det.limit_type": "max", "Det.limit_side_len": DETECT_SIDE,
                                       "EngineConfig.onnxruntime.intra_op_num_threads": threads,
                                       "EngineConfig.onnxruntime.inter_op_num_threads": 1})

    def read(self, rgb: np.ndarray, min_score: float) -> list[tuple[list[float], str, float]]:
        """``[(box [x0, y0, x1, y1], text, score)]`` of the text lines in an RGB frame."""
        out = self.engine(np.ascontiguousarray(rgb[:, :, ::-1]))  # rapidocr takes OpenCV's BGR
        if out.boxes is None:
            return []
        lines = []
        for quad, text, score in zip(out.boxes, out.txts, out.scores):
            quad = np.asarray(quad, np.float32)
            tall = quad[:, 1].max() - quad[:, 1].min() > MAX_LINE_HEIGHT * rgb.shape[0]
            if score >= min_score and text.strip() and not tall:
                lines.append(([float(quad[:, 0].min()), float(quad[:, 1].min()), float(quad[:, 0].max()), float(quad[:, 1].max())],
                              text.strip(), float(score)))
        return lines


@functools.lru_cache(maxsize=1)
def text_reader() -> TextReader:
    return TextReader()


def _area(b) -> float:
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def _intersection(a, b) -> float:
    return _area([max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])])


def place_boxes(lines: list[tuple[list[float], str, float]], time_s: float, crop_box: list[int] | None,
                mouth_box: np.ndarray | None, width: int, height: int) -> list[TextBox]:
    """Text lines of one frame as ``TextBox`` records: the share of each inside the clip's square
    crop (``[x, y, side]``; None = the full frame) and whether it touches the mouth box dilated by
    half its size (a subtitle drawn over the chin reaches the lips' motion)."""
    crop = [0, 0, width, height] if crop_box is None else [crop_box[0], crop_box[1], crop_box[0] + crop_box[2], crop_box[1] + crop_box[2]]
    mouth = None
    if mouth_box is not None and not np.isnan(mouth_box).any():
        mw, mh = mouth_box[2] - mouth_box[0], mouth_box[3] - mouth_box[1]
        mouth = [mouth_box[0] - mw / 2, mouth_box[1] - mh / 2, mouth_box[2] + mw / 2, mouth_box[3] + mh / 2]
    out = []
    for box, text, score in lines:
        a = _area(box)
        out.append(TextBox(time_s=round(time_s, 3), box=[round(v, 1) for v in box], text=text, score=round(min(score, 1.0), 4),
                           in_crop=round(_intersection(box, crop) / a, 4) if a > 0 else 0.0,
                           over_mouth=bool(mouth is not None and _intersection(box, mouth) > 0)))
    return out


def is_subtitle(box: TextBox, width: int, height: int) -> bool:
    """A line placed like a subtitle: centred horizontally, in the lower part of the frame, clear of
    its side edges, and of at least two letters or CJK characters."""
    x0, y0, x1, y1 = box.box
    centred = abs((x0 + x1) / 2 / width - 0.5) <= SUBTITLE_CENTRE_TOLERANCE
    clear = x0 >= SUBTITLE_EDGE_MARGIN * width and x1 <= (1 - SUBTITLE_EDGE_MARGIN) * width
    letters = sum(ch.isalnum() for ch in box.text)
    return centred and clear and (y0 + y1) / 2 / height >= SUBTITLE_MIN_Y and letters >= 2


def subtitle_lines(boxes: list[TextBox], width: int, height: int) -> list[str]:
    """The subtitle text over a clip: per sampled frame its subtitle lines top to bottom, then
    consecutive repeats dropped (a line stays up over several samples; OCR of the same line twice
    may differ by a character, so a near-repeat keeps the longer reading)."""
    frames: dict[float, list[TextBox]] = {}
    for b in boxes:
        if is_subtitle(b, width, height):
            frames.setdefault(b.time_s, []).append(b)
    lines: list[str] = []
    for t in sorted(frames):
        text = "".join(b.text for b in sorted(frames[t], key=lambda b: b.box[1]))
        if lines and _similar(lines[-1], text):
            if len(text) > len(lines[-1]):
                lines[-1] = text
            continue
        lines.append(text)
    return lines


def _similar(a: str, b: str) -> bool:
    na, nb = normalise_text(a), normalise_text(b)
    return bool(na) and bool(nb) and edit_distance(na, nb) <= 0.2 * max(len(na), len(nb))


@functools.lru_cache(maxsize=1)
def _t2s():
    from opencc import OpenCC

    return OpenCC("t2s")


def normalise_text(text: str) -> str:
    """What CER compares: simplified Chinese, Arabic numerals, no punctuation or spaces, lower case,
    full-width forms folded (NFKC)."""
    import cn2an

    text = unicodedata.normalize("NFKC", _t2s().convert(text)).lower()
    try:
        text = cn2an.transform(text, "cn2an")  # 二〇二四年 / 三点五 → 2024年 / 3.5 on both sides alike
    except Exception:  # cn2an refuses some mixed strings; compare them unconverted
        pass
    return "".join(ch for ch in text if ch.isalnum() and not unicodedata.category(ch).startswith("P"))


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (substitutions, insertions, deletions of one character each)."""
    if len(a) < len(b):
        a, b = b, a
    prev = np.arange(len(b) + 1)
    for i, ca in enumerate(a, 1):
        cur = np.empty_like(prev)
        cur[0] = i
        same = np.array([ca == cb for cb in b], bool)
        for j in range(1, len(b) + 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (0 if same[j - 1] else 1))
        prev = cur
    return int(prev[-1])


def character_error_rate(reference: str, hypothesis: str) -> float | None:
    """CER = (S + D + I) / N of ``hypothesis`` against ``reference`` after ``normalise_text`` (N =
    reference characters), as jiwer's ``cer`` computes it; None when the reference is empty."""
    ref, hyp = normalise_text(reference), normalise_text(hypothesis)
    if not ref:
        return None
    return edit_distance(ref, hyp) / len(ref)


def substring_distance(needle: str, haystack: str) -> int:
    """Fewest edits that turn ``needle`` into some substring of ``haystack`` (semi-global alignment:
    where the match starts and ends in ``haystack`` is free)."""
    prev = np.zeros(len(haystack) + 1, np.int64)  # starting anywhere costs nothing
    for i, cn in enumerate(needle, 1):
        cur = np.empty_like(prev)
        cur[0] = i
        for j, ch in enumerate(haystack, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (cn != ch))
        prev = cur
    return int(prev.min())  # ending anywhere too


def subtitle_cer(lines: list[str], transcript: str) -> float | None:
    """How much of the subtitle text the transcript does not say: per subtitle line, the edits to
    the closest stretch of the transcript, summed over lines, divided by the subtitle characters
    (after ``normalise_text``). Lines between the sampled frames, and speech before or after the
    clip's subtitles, cost nothing; a line the speaker did not say costs its length. None without
    subtitle text."""
    hyp = normalise_text(transcript)
    refs = [r for r in (normalise_text(line) for line in lines) if r]
    total = sum(len(r) for r in refs)
    if not total:
        return None
    return sum(substring_distance(r, hyp) if hyp else len(r) for r in refs) / total


def transcript_text(transcript) -> str:
    """The words of a clip's transcript (its segments' text where no words were aligned)."""
    if transcript is None:
        return ""
    return " ".join(" ".join(w.text for w in s.words) if s.words else s.text for s in transcript.segments).strip()
