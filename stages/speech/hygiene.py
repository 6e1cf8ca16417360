"""Transcript hygiene: flag the segments Whisper made up or looped on.

Per segment (``Segment.flags``):

* ``loop``: an n-gram (n = 1–4 characters for Chinese/Japanese/Cantonese, words otherwise) repeated
  ``asr_loop_repeats`` (4) times in a row — Whisper's characteristic failure ("大啲嘅嘅嘅嘅嘅").
* ``high_compression``: zlib compression ratio of the text above ``asr_max_compression_ratio``
  (2.4: Whisper's ``compression_ratio_threshold``; ratio as whisper/utils.py ``compression_ratio``).
* ``low_logprob``: mean log-probability of the segment's tokens (teacher-forced through the
  Whisper decoder, EOT included in the count as faster-whisper recovers ``avg_logprob``) below
  ``asr_min_avg_logprob`` (-1.0: Whisper's ``logprob_threshold``).
* ``no_speech``: Whisper's no-speech probability of the segment's audio above
  ``asr_max_no_speech_prob`` (0.6: ``no_speech_threshold``) *and* a low log-probability (Whisper's
  own rule for silence).
* ``over_non_speech``: less than ``asr_min_voiced_share`` of the segment's 32-ms frames carry
  speech-band energy 15 dB over the recording's floor (the energy VAD disagrees with the text).

whisperX's batched pipeline does not return ``avg_logprob`` / ``no_speech_prob``, so they are
recomputed here with one encoder pass per segment on the same CTranslate2 model.
"""

from __future__ import annotations

import zlib

import numpy as np

from .options import SAMPLE_RATE

CJK = ("zh", "ja", "yue")


def compression_ratio(text: str) -> float:
    """UTF-8 bytes over zlib-compressed bytes (whisper/utils.py ``compression_ratio``)."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def has_loop(text: str, language: str | None, repeats: int = 4, max_n: int = 4) -> bool:
    """Whether an n-gram (n ≤ ``max_n``) occurs ``repeats`` times in a row."""
    units = [c for c in text if not c.isspace() and c.isalnum()] if language in CJK else text.split()
    for n in range(1, max_n + 1):
        for i in range(0, len(units) - n * repeats + 1):
            gram = units[i: i + n]
            if all(units[i + k * n: i + (k + 1) * n] == gram for k in range(1, repeats)):
                return True
    return False


def voiced_frames(audio: np.ndarray, rel_db: float = 15.0, frame_s: float = 0.032, headroom_db: float = 25.0) -> np.ndarray:
    """Per ``frame_s`` frame: speech-band (300–3400 Hz) power (``stages.sync.speech_band_rms``) more
    than ``rel_db`` over the recording's floor, and above -70 dBFS. The floor is the 10th-percentile
    frame, but no higher than ``headroom_db`` + ``rel_db`` under the loud level (95th percentile):
    a short recording of continuous speech has no silence to measure a floor on, and its 10th
    percentile is speech (real talk-show clips were flagged whole)."""
    from stages.sync import speech_band_rms

    n = int(len(audio) // int(frame_s * SAMPLE_RATE))
    if n == 0:
        return np.zeros(0, bool)
    power = speech_band_rms(audio, SAMPLE_RATE, 1.0 / frame_s, n).astype(np.float64) ** 2
    floor = min(np.percentile(power, 10), np.percentile(power, 95) * 10 ** (-(headroom_db + rel_db) / 10))
    return (power > floor * 10 ** (rel_db / 10)) & (power > 1e-7)


def whisper_scores(models, audio: np.ndarray, start_s: float, end_s: float, text: str, language: str) -> tuple[float, float]:
    """(avg_logprob, no_speech_prob) of ``text`` over the audio of one segment, from the speech
    stage's faster-whisper model (one encoder pass, a forced decoder pass, one generation step)."""
    from faster_whisper.audio import pad_or_trim
    from faster_whisper.tokenizer import Tokenizer

    wm = models.asr.model
    tok = models._tokenizers.get(language)
    if tok is None:
        tok = models._tokenizers[language] = Tokenizer(wm.hf_tokenizer, wm.model.is_multilingual, task="transcribe", language=language)
    chunk = audio[int(start_s * SAMPLE_RATE): int(end_s * SAMPLE_RATE)]
    if len(chunk) < SAMPLE_RATE // 10:
        return float("nan"), float("nan")
    features = wm.feature_extractor(chunk)
    num_frames = min(features.shape[-1], wm.feature_extractor.nb_max_frames)
    encoder_output = wm.encode(pad_or_trim(features[:, :num_frames]))
    tokens = tok.encode(" " + text.strip())
    (aligned,) = wm.model.align(encoder_output, tok.sot_sequence, [tokens], num_frames)
    probs = np.clip(np.asarray(aligned.text_token_probs, np.float64), 1e-12, 1.0)
    avg_logprob = float(np.log(probs).sum() / (len(tokens) + 1))
    (gen,) = wm.model.generate(encoder_output, [list(tok.sot_sequence)], max_length=1, return_no_speech_prob=True)
    return avg_logprob, float(gen.no_speech_prob)


def flag_segments(segments, audio: np.ndarray, language: str, opts, models=None) -> None:
    """Fill each segment's scores and ``flags`` in place (``opts``: the speech stage's options;
    without ``models`` the Whisper scores are left out)."""
    voiced = voiced_frames(audio)
    hop_s = 0.032
    for seg in segments:
        flags = []
        seg.compression_ratio = round(compression_ratio(seg.text), 3)
        if models is not None:
            lp, ns = whisper_scores(models, audio, seg.start_s, seg.end_s, seg.text, language)
            seg.avg_logprob = None if np.isnan(lp) else round(lp, 4)
            seg.no_speech_prob = None if np.isnan(ns) else round(ns, 4)
        if has_loop(seg.text, language, opts.asr_loop_repeats):
            flags.append("loop")
        if seg.compression_ratio > opts.asr_max_compression_ratio:
            flags.append("high_compression")
        if seg.avg_logprob is not None and seg.avg_logprob < opts.asr_min_avg_logprob:
            flags.append("low_logprob")
            if seg.no_speech_prob is not None and seg.no_speech_prob > opts.asr_max_no_speech_prob:
                flags.append("no_speech")
        f0, f1 = int(seg.start_s / hop_s), int(np.ceil(seg.end_s / hop_s))
        share = float(voiced[f0:f1].mean()) if f1 > f0 and len(voiced[f0:f1]) else 0.0
        if share < opts.asr_min_voiced_share:
            flags.append("over_non_speech")
        seg.flags = flags
