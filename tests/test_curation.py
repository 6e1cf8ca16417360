"""Broadcast curation (stages/curate): known answers on real recordings and frames made from them.

The whole-pipeline checks (a subtitle across the mouth rejected, a rebroadcast copy dropped across
videos, the genuine recordings untouched) are in tests/test_real_media.py's shared run; the
detectors' precision and recall on every fixture are benchmarks/curation.py's (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from real_media import real_path
from schemas import ClipRecord
from schemas.curation import ClipCuration, ClipFingerprint, TextBox
from stages.curate import CurateOptions, Fingerprinted, gates, group
from stages.curate.fingerprint import audio_subfingerprints, best_alignment, decode_audio, make_fingerprint, same_content
from stages.curate.motion import camera_scores, head_scores, pair_motion, pair_offsets
from stages.curate.occlusion import occlusion_ratio
from stages.curate.picture import border_in_crop, border_sizes, brisque_score, picture_area, picture_in_picture
from stages.curate.text import (character_error_rate, edit_distance, is_subtitle, normalise_text, place_boxes, subtitle_cer,
                                subtitle_lines)
from stages.frames import read_clip_frames
from stages.speech import load_audio


def _frames(name: str, offsets: list[int], size: int, start_s: float = 1.0) -> dict[int, np.ndarray]:
    return dict(read_clip_frames(real_path(name), size, size, start_s, offsets))


@pytest.fixture(scope="module")
def r2_frame() -> np.ndarray:
    """A frame of retalking_2 (a man in front of a wall map: texture to track), 844²."""
    return _frames("retalking_2", [0], 844)[0]


# ---------------------------------------------------------------------------------------------
# text


def test_text_normalisation_and_cer_known_values():
    assert normalise_text("央視新聞，今天！") == "央视新闻今天"           # traditional → simplified, punctuation out
    assert normalise_text("二〇二四年") == normalise_text("2024年")       # numerals on both sides alike
    assert normalise_text("Hello, World") == "helloworld"
    assert edit_distance("kitten", "sitting") == 3
    assert character_error_rate("今天天气很好", "今天天汽很好") == pytest.approx(1 / 6)
    # subtitles against a longer transcript: each line costs its edits to the closest stretch
    said = "and the heart of my California congressional district, where I chase my own dreams"
    assert subtitle_cer(["and the heart of my", "district, where I chase my"], said) == 0.0
    assert subtitle_cer(["and the hart of my"], said) == pytest.approx(1 / 14)  # one edit for the 14 letters of the line
    assert subtitle_cer(["央视新闻联播"], said) == 1.0                     # nothing of it is said
    assert subtitle_cer([], said) is None


def test_subtitle_placement_and_lines():
    w, h = 1000, 800
    sub = TextBox(time_s=1.0, box=[400, 700, 600, 740], text="今天的新闻", score=0.9)
    assert is_subtitle(sub, w, h)
    assert not is_subtitle(sub.model_copy(update={"box": [0, 700, 300, 740]}), w, h)      # at the edge: a ticker
    assert not is_subtitle(sub.model_copy(update={"box": [400, 100, 600, 140]}), w, h)    # at the top: a title
    assert not is_subtitle(sub.model_copy(update={"text": "新"}), w, h)                   # one character
    seq = [sub, sub.model_copy(update={"time_s": 3.0, "text": "今天的新闻。"}), sub.model_copy(update={"time_s": 5.0, "text": "明天见"})]
    assert subtitle_lines(seq, w, h) == ["今天的新闻。", "明天见"]  # a repeat keeps its longer reading


def test_text_boxes_against_crop_and_mouth():
    lines = [([100.0, 500.0, 300.0, 540.0], "字幕在下面", 0.95), ([300.0, 290.0, 500.0, 320.0], "嘴上", 0.9)]
    mouth = np.array([350.0, 300.0, 420.0, 330.0])
    boxes = place_boxes(lines, 2.0, [200, 100, 400], mouth, 700, 700)  # crop x 200-600, y 100-500
    assert boxes[0].in_crop == 0.0 and not boxes[0].over_mouth
    assert boxes[1].in_crop == 1.0 and boxes[1].over_mouth


@pytest.mark.models
def test_ocr_reads_chinese_subtitle_drawn_on_a_real_frame(tmp_path):
    from stages.curate.text import text_reader

    out = tmp_path / "sub.png"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-ss", "1", "-i", real_path("retalking_4"), "-frames:v", "1", "-vf",
                    "drawtext=fontfile=/usr/share/fonts/truetype/wqy/wqy-microhei.ttc:text='今天的新闻联播到此结束':fontcolor=white:"
                    "fontsize=34:box=1:boxcolor=black@0.6:x=(w-text_w)/2:y=h-80", str(out)], check=True)
    from PIL import Image

    rgb = np.asarray(Image.open(out).convert("RGB"))
    lines = text_reader().read(rgb, 0.6)
    assert [t for _, t, _ in lines] == ["今天的新闻联播到此结束"]
    (x0, y0, x1, y1), _, _ = lines[0]
    assert abs((x0 + x1) / 2 - 350) < 20 and 610 < y0 < y1 < 690
    assert text_reader().read(_frames("retalking_4", [0], 700)[0], 0.6) == []  # the untouched frame has no text


# ---------------------------------------------------------------------------------------------
# motion


def test_head_scores_match_talkvid_definitions():
    T, w, h = 10, 800, 400
    face = np.zeros((T, 478, 3), np.float32)
    face[:, :, 0] = 0.5 + np.arange(T)[:, None] * (4 / w)  # 4 px to the right every frame, in x only
    face[:, :, 1] = 0.5
    pose = np.zeros((T, 3), np.float32)
    pose[:, 0] = np.arange(T) * 3.0  # yaw +3° a frame
    pose[:, 1] = 10.0
    s = head_scores(face, pose, w, h)
    assert s["head_movement_avg"] == pytest.approx(2 / 400)  # mean |Δ| over x and y (4 and 0 px) / short side 400
    assert s["head_movement_max"] == pytest.approx(2 / 400)
    assert s["head_jitter"] == pytest.approx(0.0, abs=1e-6)  # steady motion has no jitter
    assert s["head_rotation_avg"] == pytest.approx(3.0)
    # orientation: per frame sqrt((|yaw|/180·100)² + (10/180·100)²), averaged
    want = np.mean(np.sqrt((np.arange(T) * 3.0 / 180 * 100) ** 2 + (10 / 180 * 100) ** 2))
    assert s["head_orientation"] == pytest.approx(want, rel=1e-3)


def test_camera_motion_of_a_shifted_and_scaled_real_frame(r2_frame):
    import cv2

    h, w = r2_frame.shape[:2]
    shifted = cv2.warpAffine(r2_frame, np.float32([[1, 0, 12], [0, 1, -5]]), (w, h), borderMode=cv2.BORDER_REFLECT)
    moved, log_scale = pair_motion(r2_frame, shifted, None)
    assert moved == pytest.approx([12, -5], abs=1.0) and abs(log_scale) < 0.01
    zoom = cv2.warpAffine(r2_frame, cv2.getRotationMatrix2D((w / 2, h / 2), 0, 1.1), (w, h), borderMode=cv2.BORDER_REFLECT)
    moved, log_scale = pair_motion(r2_frame, zoom, None)
    assert log_scale == pytest.approx(np.log(1.1), abs=0.01) and np.hypot(*moved) < 2
    # a pan of 12 px per 0.2 s on an 844-px frame: 0.0711 short sides per second, steady: no shake
    s = camera_scores([(np.array([12.0, 0.0]), 0.0)] * 4, 0.2, w, h)
    assert s["camera_pan"] == pytest.approx(12 / 0.2 / 844, rel=1e-3) and s["camera_shake"] == 0 and s["camera_zoom"] == 0
    assert camera_scores([None, None], 0.2, w, h) == {}
    assert pair_offsets(25, 25.0, 3, 0.2) == [(0, 5), (10, 15), (19, 24)]


def test_camera_is_still_on_an_untouched_real_recording():
    frames = _frames("retalking_2", [0, 5, 40, 45, 80, 85], 844)
    motions = [pair_motion(frames[a], frames[b], np.array([214.0, 278.0, 550.0, 617.0])) for a, b in ((0, 5), (40, 45), (80, 85))]
    s = camera_scores(motions, 0.2, 844, 844)
    assert s["camera_pan"] < 0.01 and s["camera_zoom"] < 0.01 and s["camera_shake"] < 0.01


# ---------------------------------------------------------------------------------------------
# picture and occlusion


def test_black_bars_are_measured_and_left_out_of_the_picture(r2_frame):
    frame = r2_frame.copy()
    frame[:120] = 0
    frame[-100:] = 0
    assert border_sizes([frame, frame]) == (120, 100, 0, 0)
    assert border_sizes([frame, r2_frame]) == (0, 0, 0, 0)  # only bars in every frame count
    assert border_in_crop((120, 100, 0, 0), [0, 0, 844], 844, 844) == pytest.approx(220 / 844, abs=1e-3)
    assert border_in_crop((120, 100, 0, 0), [200, 200, 400], 844, 844) == 0.0  # the crop is below the top bar
    assert picture_area(frame, None, (120, 100, 0, 0)).shape[:2] == (844 - 220, 844)


def test_brisque_rises_with_blur_on_a_real_frame(r2_frame):
    import cv2

    sharp = brisque_score(r2_frame)
    blurred = brisque_score(cv2.GaussianBlur(r2_frame, (0, 0), 6))  # σ 1.8 px at the 256 px BRISQUE sees
    assert 0 < sharp < 57 < blurred  # the default max_brisque between them


def test_picture_in_picture_inset_of_another_recording(r2_frame):
    frames = _frames("retalking_4", [0, 20, 40, 60, 80], 700)
    insets = _frames("vox_00086", [0, 20, 40, 60, 80], 224)
    with_inset = []
    for k in frames:
        f = frames[k].copy()
        f[30:30 + 168, 500:500 + 168] = 255  # a white frame ...
        f[34:34 + 160, 504:504 + 160] = insets[k][32:192, 32:192]  # ... around another speaker
        with_inset.append(f)
    share = picture_in_picture(with_inset)
    assert share == pytest.approx(168 * 168 / 700 ** 2, rel=0.3)
    assert picture_in_picture(list(frames.values())) == 0.0


def test_hand_over_mouth_ratio():
    T = 10
    boxes = np.full((T, 5, 4), np.nan)
    boxes[:, 1] = [100, 100, 140, 120]      # mouth
    boxes[2:6, 2] = [90, 80, 160, 200]      # a left hand over it in 4 frames
    boxes[8, 3] = [300, 300, 340, 360]      # a right hand elsewhere
    boxes[4:6, 1] = np.nan                  # the mesh is lost under the hand: the last mouth box stands in
    assert occlusion_ratio(boxes, 25.0) == pytest.approx(0.4)
    assert occlusion_ratio(None, 25.0) is None


def test_gates_reject_in_order_and_pass_what_was_not_measured():
    opts = CurateOptions()
    verdicts = gates({"camera_pan": 0.5, "head_movement_avg": 0.05, "brightness": 120.0}, opts)
    assert [k for k, v in verdicts.items() if v.verdict == "fail"] == ["camera_pan", "head_movement_avg"]
    assert next(v.reason for v in verdicts.values() if v.verdict == "fail") == "camera_motion"  # the cause first
    assert verdicts["brisque"].verdict == "unverified"
    assert gates({"text_over_mouth": 0.5}, opts)["text_over_mouth"].reason == "burned_in_text"
    assert "text_over_mouth" not in gates({}, CurateOptions(text_policy="flag"))


# ---------------------------------------------------------------------------------------------
# fingerprints and rebroadcast groups


@pytest.fixture(scope="module")
def wavs(tmp_path_factory):
    """retalking_4's sound as recorded, and re-encoded at 32 kb/s AAC with the volume lowered."""
    d = tmp_path_factory.mktemp("fp")
    out = {}
    for name, args in (("orig", []), ("copy", ["-af", "volume=0.5", "-c:a", "aac", "-b:a", "32k"])):
        enc = d / f"{name}.m4a"
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", real_path("retalking_4"), "-vn", *(args or ["-c:a", "copy"]),
                        str(enc)], check=True)
        wav = d / f"{name}.wav"
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(enc), "-ac", "1", "-ar", "16000", str(wav)], check=True)
        out[name] = load_audio(str(wav))
    other = d / "other.wav"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", real_path("retalking_1"), "-ac", "1", "-ar", "16000", str(other)],
                   check=True)
    out["other"] = load_audio(str(other))
    return out


def test_audio_fingerprint_finds_a_reencoded_copy_at_its_offset(wavs):
    a = audio_subfingerprints(wavs["orig"][16000:16000 * 5])           # 1-5 s
    b = audio_subfingerprints(wavs["copy"][int(16000 * 1.64):16000 * 6])  # 1.64-6 s of the copy
    ber, lag = best_alignment(a, b, 40)
    assert ber < 0.2
    assert lag * 0.032 == pytest.approx(0.64, abs=0.04)  # a[i] ~ b[i - lag]: the copy starts 0.64 s later
    c = audio_subfingerprints(wavs["other"][16000:16000 * 5])
    assert best_alignment(a, c, 40)[0] > 0.4  # another speaker's sound is near chance (0.5)
    fp = make_fingerprint(["0" * 16], 2.0, wavs["orig"][:16000 * 3])
    assert np.array_equal(decode_audio(fp.audio), audio_subfingerprints(wavs["orig"][:16000 * 3]))


def _fp(audio: np.ndarray, hashes: list[str]) -> ClipFingerprint:
    return make_fingerprint(hashes, 2.0, audio)


def test_duplicate_groups_keep_the_earliest_and_need_picture_and_sound(wavs):
    pic = ["c3a5" * 4] * 8
    other_pic = ["3c5a" * 4] * 8
    orig, copy, other = wavs["orig"][:16000 * 4], wavs["copy"][:16000 * 4], wavs["other"][:16000 * 4]
    items = [Fingerprinted("b-copy", ("b", 0.0), _fp(copy, pic)), Fingerprinted("a-orig", ("a", 0.0), _fp(orig, pic)),
             Fingerprinted("c-other", ("c", 0.0), _fp(other, pic)),          # same studio picture, other words
             Fingerprinted("d-voice", ("d", 0.0), _fp(orig, other_pic))]     # the same words over another picture
    g = group(items, 0.35, 12, 0.5)
    assert g.group_of == {"a-orig": "a-orig", "b-copy": "a-orig"}
    assert g.kept_for == {"b-copy": "a-orig"}
    # a clip registered by an earlier run is kept over this run's copy
    earlier = Fingerprinted("z-earlier", ("", "z", 0.0), _fp(copy, pic), earlier_run=True)
    g = group([items[1], earlier], 0.35, 12, 0.5)
    assert g.kept_for == {"a-orig": "z-earlier"}
    ok, ber, dist = same_content(_fp(orig, pic), _fp(copy, pic), 0.35, 12, 0.5)
    assert ok and ber < 0.2 and dist == 0


def _clip(key: str, identity: str | None = None, group: str | None = None, fingerprint: ClipFingerprint | None = None,
          uid: str | None = None) -> ClipRecord:
    return ClipRecord(key=key, clip_uid=uid or key, video_id=key.rsplit("-", 1)[0], index=0, source_uri="x", start_s=0, end_s=2,
                      source_duration_s=2, fps=25, num_frames=50, sample_rate_hz=16000, num_audio_samples=32000, width=64,
                      height=64, members=["json"], identity=identity,
                      curation=ClipCuration(duplicate_group=group, fingerprint=fingerprint) if group or fingerprint else None)


def test_rebroadcast_registry_across_runs(tmp_path, wavs):
    from pipeline.engine.duplicates import group_duplicates, load_fingerprints, save_fingerprints
    from pipeline.engine.workdir import WorkDir

    out, opts, pic = WorkDir(str(tmp_path / "out")), CurateOptions(), ["c3a5" * 4] * 8
    orig, copy = _fp(wavs["orig"][:16000 * 4], pic), _fp(wavs["copy"][:16000 * 4], pic)
    # one source listed twice under two ids: two keys, one clip_uid; the second is a copy
    keep, dropped, registry = group_duplicates([_clip("ep1-0000", fingerprint=orig, uid="u"), _clip("ep1b-0000", fingerprint=orig, uid="u")],
                                               out, opts)
    assert [c.key for c in keep] == ["ep1-0000"] and [c.key for c in dropped] == ["ep1b-0000"]
    save_fingerprints(registry, out)
    # a later run into the same folder: its re-encoded copy goes, the earlier clip is its group
    keep, dropped, registry = group_duplicates([_clip("ep2-0000", fingerprint=copy)], out, opts)
    assert keep == [] and dropped[0].curation.duplicate_group == "ep1-0000" and dropped[0].curation.duplicate_of == ["ep1-0000"]
    assert [e.key for e in registry] == ["ep1-0000"]
    # the first run again (resumed): its clip is itself, not a copy of its registry entry
    keep, dropped, _ = group_duplicates([_clip("ep1-0000", fingerprint=orig, uid="u")], out, opts)
    assert [c.key for c in keep] == ["ep1-0000"] and dropped == [] and keep[0].curation.duplicate_group is None
    assert [e.key for e in load_fingerprints(out)] == ["ep1-0000"]
    # keep mode: both stay, grouped
    keep, dropped, _ = group_duplicates([_clip("ep2-0000", fingerprint=copy)], out, CurateOptions(duplicates="keep"))
    assert [c.key for c in keep] == ["ep2-0000"] and keep[0].curation.duplicate_group == "ep1-0000" and dropped == []


def test_release_splits_keep_a_rebroadcast_group_together():
    from pipeline.release.splits import split_keys

    clip = _clip

    keys = split_keys([clip("a-0000", "anchor1", "g"), clip("b-0000", "anchor2", "g"), clip("c-0000", "anchor3")], [])
    assert keys["a-0000"] == keys["b-0000"] != keys["c-0000"]
