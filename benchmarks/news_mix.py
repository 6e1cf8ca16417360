"""A news mix for the throughput benchmark: episodes cut together from an anchor talking, B-roll
without faces under a voice-over, a wide studio shot (the anchor small), a two-shot (two anchors at
a desk) and silence (the anchor on screen, no sound), in stated shares.

The anchors are real talking-head recordings with their own audio (the held-out files of
``media/real/``, tests/real_media.py), scaled to the frame; the B-roll is an ffmpeg source under
espeak-ng speech. Every episode is one H.264 + AAC file at 480x480, 25 fps, with hard cuts between
segments, like a broadcast.
"""

from __future__ import annotations

import os
import subprocess
import tempfile

from pipeline.demo.inputs import speech_audio

#: Real recordings (media/real/, held out from every threshold's calibration) used as the anchors.
ANCHORS = ("retalking_4", "retalking_5", "vox_00098", "vox_00473", "vox_620900105")
REAL_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "media", "real")

#: Share of an episode's seconds per kind (what a news hour looks like, roughly: most of it is not
#: a frontal anchor); the benchmark prints the shares it actually built.
MIX = {"anchor": 0.35, "broll": 0.25, "wide": 0.15, "two_shot": 0.10, "silence": 0.15}
SIZE = 480

BROLL_TEXT = ["The storm moved east overnight, closing roads across the valley.",
              "Markets opened higher this morning after the central bank's announcement.",
              "Crews worked through the night to restore power to the northern districts."]


def _ff(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *args], check=True)


def _seconds(path: str) -> float:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", path],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


ENC = ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-r", "25", "-c:a", "aac", "-ar", "44100", "-ac", "1"]


def build_segments(folder: str) -> dict[str, list[str]]:
    """Segment files per kind (cached in ``folder``)."""
    os.makedirs(folder, exist_ok=True)
    anchors = []
    for name in ANCHORS:
        p = os.path.join(folder, f"anchor_{name}.mp4")
        if not os.path.exists(p):  # the real recording filling the frame, its own audio
            _ff("-i", os.path.join(REAL_DIR, f"{name}.mp4"), "-vf", f"scale={SIZE}:{SIZE},setsar=1", *ENC, p)
        anchors.append(p)
    seg: dict[str, list[str]] = {"anchor": anchors, "broll": [], "wide": [], "two_shot": [], "silence": []}
    for i, text in enumerate(BROLL_TEXT):
        p = os.path.join(folder, f"broll_{i}.mp4")
        if not os.path.exists(p):
            import soundfile as sf

            audio, sr = speech_audio(text, "en-us")
            with tempfile.TemporaryDirectory() as tmp:
                wav = os.path.join(tmp, "vo.wav")
                sf.write(wav, audio, sr)
                # B-roll: a real photo without a face, slowly zoomed (lavfi's cellauto and testsrc
                # patterns read as interlaced to idet and cost a deinterlace no broadcast B-roll does)
                import skimage.data
                from PIL import Image

                photo = os.path.join(tmp, "broll.png")
                Image.fromarray(getattr(skimage.data, ["rocket", "coffee", "hubble_deep_field"][i % 3])()).save(photo)
                _ff("-loop", "1", "-framerate", "25", "-i", photo, "-i", wav, "-filter_complex",
                    f"[0:v]scale=-2:{2 * SIZE},zoompan=z='1+0.001*on':d=1:s={SIZE}x{SIZE}:fps=25[v]",
                    "-map", "[v]", "-map", "1:a", "-shortest", *ENC, p)
        seg["broll"].append(p)
    for i, a in enumerate(anchors):
        wide = os.path.join(folder, f"wide_{i}.mp4")
        if not os.path.exists(wide):  # the anchor at a fifth of the frame in a studio: a face ~18 px tall
            _ff("-i", a, "-vf", f"scale=96:96,pad={SIZE}:{SIZE}:192:300:color=0x3a4a5a", *ENC, wide)
        seg["wide"].append(wide)
        silent = os.path.join(folder, f"silence_{i}.mp4")
        if not os.path.exists(silent):  # on screen, lips moving, no sound: nothing to transcribe
            _ff("-i", a, "-f", "lavfi", "-i", "anullsrc=r=44100:cl=mono", "-map", "0:v", "-map", "1:a", "-shortest", *ENC, silent)
        seg["silence"].append(silent)
    for i in range(len(anchors)):
        two = os.path.join(folder, f"two_shot_{i}.mp4")
        if not os.path.exists(two):  # two anchors side by side, the left one heard
            b = anchors[(i + 1) % len(anchors)]
            _ff("-i", anchors[i], "-i", b, "-filter_complex",
                f"[0:v]scale=240:240[l];[1:v]scale=240:240[r];[l][r]hstack,pad={SIZE}:{SIZE}:0:120:color=0x3a4a5a[v]",
                "-map", "[v]", "-map", "0:a", *ENC, two)
        seg["two_shot"].append(two)
    return seg


def build_episode(path: str, segments: dict[str, list[str]], target_s: float, seed: int) -> dict[str, float]:
    """Concatenate segments into ``path`` until about ``target_s`` seconds, each kind filling its
    share of ``MIX``; returns the seconds per kind."""
    import random

    rng = random.Random(seed)
    have = {k: 0.0 for k in MIX}
    chosen: list[str] = []
    total = 0.0
    while total < target_s:
        kind = max(MIX, key=lambda k: MIX[k] * (total + 1) - have[k])  # the kind furthest below its share
        p = rng.choice(segments[kind])
        d = _seconds(p)
        chosen.append(p)
        have[kind] += d
        total += d
    inputs = [a for p in chosen for a in ("-i", p)]
    graph = "".join(f"[{i}:v][{i}:a]" for i in range(len(chosen))) + f"concat=n={len(chosen)}:v=1:a=1[v][a]"
    _ff(*inputs, "-filter_complex", graph, "-map", "[v]", "-map", "[a]", *ENC, path)
    return have
