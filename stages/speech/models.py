"""Loading the speech models once per worker: whisperX ASR, an aligner, a diarizer."""


from __future__ import annotations

import contextlib
import logging
import os




from stages.errors import StageError
from .assets import OFFLINE_BASE, cache_root, ensure_offline_whisper_base, ensure_sentence_splitter
from .options import SpeechModels, SpeechOptions

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# model loading


def resolve_device(opts: SpeechOptions) -> tuple[str, str]:
    import torch

    device = opts.device if opts.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    compute = opts.compute_type if opts.compute_type != "auto" else ("float16" if device == "cuda" else "int8")
    return device, compute


@contextlib.contextmanager
def _trusted_full_unpickling():
    """whisperX's VAD checkpoint ships inside the whisperx wheel and pickles omegaconf objects, which
    torch>=2.6's weights-only loader refuses. Allow full unpickling for this one trusted file only."""
    key = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
    old = os.environ.get(key)
    os.environ[key] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def load_speech_models(opts: SpeechOptions) -> SpeechModels:
    """Load ASR (+VAD), the optional aligner and the diarizer. No network: local files or caches only."""
    import whisperx

    device, compute = resolve_device(opts)
    model_path = ensure_offline_whisper_base(cache_root(opts)) if opts.model == OFFLINE_BASE else opts.model
    try:
        with _trusted_full_unpickling():
            asr = whisperx.load_model(
                model_path, device, compute_type=compute, language=opts.language, vad_method="pyannote",
                vad_options={"vad_onset": opts.vad_onset, "vad_offset": opts.vad_offset},
                asr_options={"beam_size": opts.beam_size}, local_files_only=True, threads=opts.cpu_threads,
            )
    except Exception as e:
        raise StageError("missing_model", f"cannot load Whisper model {opts.model!r} offline: {e}") from None
    name = "whisper-base" if opts.model == OFFLINE_BASE else os.path.basename(str(opts.model).rstrip("/"))
    models = SpeechModels(options=opts, device=device, asr=asr, asr_backend=f"whisperx-batched:{name}:{compute}")
    if opts.align_model:
        if not os.path.isdir(opts.align_model):
            raise StageError("missing_model", f"align_model {opts.align_model!r} is not a local directory")
        ensure_sentence_splitter(cache_root(opts))
        model, meta = whisperx.load_align_model(language_code=opts.language or "en", device=device, model_name=opts.align_model)
        models.aligner = (model, meta)
        models.align_backend = f"wav2vec2:{os.path.basename(opts.align_model.rstrip('/'))}"
    backend = opts.diarization
    if backend == "auto":
        backend = "pyannote" if opts.pyannote_model else "embeddings"
    if backend == "pyannote":
        if not opts.pyannote_model:
            raise StageError("missing_model", "diarization=pyannote needs speech.pyannote_model (a local path or cached hub id)")
        from whisperx.diarize import DiarizationPipeline

        models.diarizer = DiarizationPipeline(model_name=opts.pyannote_model, use_auth_token=opts.hf_token, device=device)
        models.diarization_backend = f"pyannote:{os.path.basename(opts.pyannote_model.rstrip('/'))}"
    elif backend == "embeddings":
        from resemblyzer import VoiceEncoder

        models.diarizer = VoiceEncoder(device=device, verbose=False)
        models.diarization_backend = f"resemblyzer-ge2e+{opts.speaker_clustering}"
    elif backend != "none":
        raise StageError("bad_config", f"unknown diarization backend {backend!r}")
    return models


# ---------------------------------------------------------------------------------------------
# the stage


