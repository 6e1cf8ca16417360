"""The speech stage's options (config section ``speech``) and what a worker loads once."""


from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


from pydantic import Field

from schemas.settings import Settings, runtime_field


SAMPLE_RATE = 16000
#: ``model: base``: OpenAI Whisper base, assembled offline from two PyPI packages (assets.py).
OFFLINE_BASE = "base"


class SpeechOptions(Settings):
    """Options of the speech stage (config section ``speech``)."""

    enabled: bool = True
    model: str = Field(OFFLINE_BASE, description="'base' (offline Whisper base from PyPI), a local CTranslate2 dir, or a cached hub name")
    language: str | None = Field("zh", description="default language; a source's 'language' column wins; null: detect")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda)$")
    compute_type: str = Field("auto", description="auto: float16 on CUDA, int8 on CPU")
    batch_size: int = Field(8, ge=1)
    beam_size: int = Field(5, ge=1)
    cpu_threads: int = runtime_field(1, ge=1, description="CTranslate2 threads per actor")
    vad_onset: float = Field(0.5, gt=0, lt=1, description="pyannote VAD: speech starts above this probability")
    vad_offset: float = Field(0.363, gt=0, lt=1, description="pyannote VAD: speech ends below this probability")
    align_model: str | None = Field(None, description="local Wav2Vec2ForCTC dir for whisperX forced alignment")
    diarization: str = Field("auto", pattern=r"^(auto|pyannote|embeddings|none)$")
    pyannote_model: str | None = Field(None, description="local path or cached hub id of a pyannote diarization pipeline")
    hf_token: str | None = runtime_field(None)
    min_speakers: int | None = Field(None, ge=1)
    max_speakers: int | None = Field(None, ge=1)
    hygiene: bool = Field(True, description="score and flag segments (stages/speech/hygiene.py); flagged ones leave clip transcripts")
    asr_loop_repeats: int = Field(4, ge=2, description="an n-gram repeated this often in a row is a loop")
    asr_max_compression_ratio: float = Field(2.4, gt=0, description="Whisper's compression_ratio_threshold")
    asr_min_avg_logprob: float = Field(-1.0, description="Whisper's logprob_threshold")
    asr_max_no_speech_prob: float = Field(0.6, ge=0, le=1, description="Whisper's no_speech_threshold (with a low logprob)")
    asr_min_voiced_share: float = Field(0.2, ge=0, le=1, description="a segment with fewer voiced frames is over_non_speech")
    speaker_clustering: str = Field("spectral", pattern=r"^(spectral|agglomerative)$", description="embedding diarization: spectral with the eigengap rule (speaker count), or agglomerative with speaker_distance_threshold")
    spectral_prune: float = Field(0.3, gt=0, le=1, description="spectral: share of each window's strongest neighbours kept in the affinity")
    speaker_distance_threshold: float = Field(0.35, gt=0, lt=2, description="agglomerative: cosine distance at which speaker clusters stop merging")
    embedding_window_s: float = Field(1.5, gt=0, description="embedding diarization: window length")
    embedding_hop_s: float = Field(0.75, gt=0, description="embedding diarization: hop between windows")
    embedding_merge_gap_s: float = Field(0.3, ge=0, description="embedding diarization: speech closer than this is one region")
    embedding_min_region_s: float = Field(0.3, gt=0, description="embedding diarization: shorter speech regions are not embedded")
    word_trim_rel_db: float = Field(-25.0, lt=0, description="cross-attention word times: word edges pulled in from frames this far below the loudest frame (dB)")
    cache_dir: str | None = runtime_field(None, description="where the offline Whisper base is assembled (default ~/.cache/cnas)")


@dataclass
class SpeechModels:
    """Everything loaded once per worker (an actor in the DAG)."""

    options: SpeechOptions
    device: str
    asr: Any
    asr_backend: str
    aligner: tuple[Any, dict] | None = None
    align_backend: str = "whisper-cross-attention"
    diarizer: Any = None
    diarization_backend: str = "none"
    _tokenizers: dict = field(default_factory=dict)


