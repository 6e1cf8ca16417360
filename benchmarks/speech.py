"""Speech stage on CPU (or GPU): real-time factor of ASR, alignment and diarization; WER/CER and
diarization error rate on espeak-ng fixtures with known text, times and speakers.

    .venv/bin/python benchmarks/speech.py [--device cpu|cuda] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from stages.speech import SAMPLE_RATE, SpeechOptions, load_speech_models, transcribe  # noqa: E402
from stages.text import error_rate  # noqa: E402
from test_speech import EN, ZH_HANZI, ZH_PINYIN, compose, speak  # noqa: E402


def diarization_error_rate(ref: list[tuple[float, float, str]], hyp: list[tuple[float, float, str]], step: float = 0.01) -> float:
    """Frame-level DER over reference speech: (missed + false alarm + confusion) / reference speech,
    with the best one-to-one mapping of hypothesis to reference labels (no forgiveness collar)."""
    from scipy.optimize import linear_sum_assignment

    end = max(e for _, e, _ in ref + hyp)
    n = int(np.ceil(end / step))
    def frames(turns):
        labels = np.full(n, "", dtype=object)
        for s, e, k in turns:
            labels[int(s / step) : int(e / step)] = k
        return labels
    r, h = frames(ref), frames(hyp)
    rk, hk = sorted({k for *_, k in ref}), sorted({k for *_, k in hyp})
    overlap = np.array([[np.sum((r == a) & (h == b)) for b in hk] for a in rk]) if hk else np.zeros((len(rk), 0))
    rows, cols = linear_sum_assignment(-overlap) if hk else ([], [])
    correct = overlap[rows, cols].sum() if len(rows) else 0
    ref_speech = np.sum(r != "")
    false_alarm = np.sum((r == "") & (h != ""))
    return float((ref_speech - correct + false_alarm) / max(ref_speech, 1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    en_audio, en_spans = compose([speak(s, "en-us") for s in EN], gap_s=1.0)
    zh_audio, _ = compose([speak(ZH_PINYIN, "cmn-latn-pinyin", speed=130)], gap_s=0.5)
    two_audio, two_spans = compose([speak(EN[0], "en-us"), speak(EN[1], "en-us+f4"), speak(EN[2], "en-us")], gap_s=0.8)
    ref_turns = [(a, b, k) for (a, b), k in zip(two_spans, ("A", "B", "A"))]
    print("| model/device | clip | seconds of audio | ASR RTF | align RTF | diarize RTF | error |")
    print("|---|---|---|---|---|---|---|")
    for lang, audio, ref, unit in (("en", en_audio, " ".join(EN), "word"), ("zh", zh_audio, ZH_HANZI, "char"), ("en", two_audio, None, None)):
        models = load_speech_models(SpeechOptions(language=lang, device=args.device))
        transcribe(models, audio[: SAMPLE_RATE], "warmup")
        best: dict[str, float] = {}
        for _ in range(args.repeats):
            tim: dict[str, float] = {}
            t = transcribe(models, audio, "bench", timings=tim)
            best = {k: min(v, best.get(k, v)) for k, v in tim.items()}
        secs = len(audio) / SAMPLE_RATE
        if ref is not None:
            err = f"{unit.upper()[0]}ER {error_rate(ref, t.text, unit):.2f}"
            name = f"{lang} ({len(t.segments)} segments)"
        else:
            hyp = [(w.start_s, w.end_s, w.speaker) for s in t.segments for w in s.words]
            err = f"DER {diarization_error_rate(ref_turns, hyp):.2f}, {len({k for *_, k in hyp})} speakers found (2 true)"
            name = "two voices"
        print(f"| whisper-base {models.device} {models.asr_backend.rsplit(':', 1)[-1]} | {name} | {secs:.1f} | "
              f"{best['asr'] / secs:.3f} | {best['align'] / secs:.3f} | {best['diarize'] / secs:.3f} | {err} |")


if __name__ == "__main__":
    main()
