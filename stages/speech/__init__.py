"""The speech stage: whisperX batched ASR, word timing, speaker diarization, ASR hygiene. Ray-free.

    options.py      SpeechOptions (config section ``speech``), SpeechModels, SAMPLE_RATE
    models.py       load_speech_models: ASR, aligner and diarizer, once per worker
    transcribe.py   transcribe a video's audio into a Transcript; slice_transcript for a clip
    diarization.py  speaker turns (pyannote or speaker embeddings) and their assignment to segments
    hygiene.py      flags for hallucinated, looping or non-speech segments
    assets.py       the offline Whisper base and sentence splitter; check_speech_assets (preflight)

The names below are the stage's interface to the DAG (pipeline/engine/dag.py) and the tests.
"""

from .assets import check_speech_assets, speech_assets
from .models import load_speech_models
from .options import SAMPLE_RATE, SpeechModels, SpeechOptions
from .transcribe import load_audio, slice_transcript, transcribe

__all__ = ["SAMPLE_RATE", "SpeechModels", "SpeechOptions", "check_speech_assets", "speech_assets", "load_audio", "load_speech_models",
           "slice_transcript", "transcribe"]
