"""Transcript text normalisation: simplified Chinese, consistent punctuation and spacing."""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

_CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_SPACE_BETWEEN_CJK = re.compile(rf"(?<=[{_CJK}，。！？、；：])\s+(?=[{_CJK}，。！？、；：])")
# Half-width punctuation right after a CJK character becomes its full-width form.
_ZH_PUNCT = {",": "，", ".": "。", "!": "！", "?": "？", ";": "；", ":": "："}


@lru_cache(maxsize=1)
def _t2s():
    from opencc import OpenCC

    return OpenCC("t2s")


def to_simplified(text: str) -> str:
    """Traditional → simplified Chinese (OpenCC ``t2s``); other scripts pass through unchanged."""
    return _t2s().convert(text)


def normalize_text(text: str, language: str | None) -> str:
    """NFKC-normalise, collapse whitespace; for Chinese also convert to simplified, drop spaces
    between CJK characters and use full-width punctuation after CJK text."""
    text = unicodedata.normalize("NFKC", text)
    text = re.sub(r"\s+", " ", text).strip()
    if language in ("zh", "yue") or re.search(f"[{_CJK}]", text):
        text = to_simplified(text)
        text = re.sub(rf"(?<=[{_CJK}])([,.!?;:])", lambda m: _ZH_PUNCT[m.group(1)], text)
        text = _SPACE_BETWEEN_CJK.sub("", text)
    return text


def error_rate(reference: str, hypothesis: str, unit: str) -> float:
    """Word (``unit='word'``) or character (``unit='char'``) error rate: edit distance / reference length.

    Punctuation and case are ignored; for characters, whitespace too.
    """
    def tokens(s: str) -> list[str]:
        s = re.sub(r"[^\w\s]", " ", unicodedata.normalize("NFKC", s).lower())
        return list(re.sub(r"\s+", "", s)) if unit == "char" else s.split()

    ref, hyp = tokens(reference), tokens(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1] / len(ref)
