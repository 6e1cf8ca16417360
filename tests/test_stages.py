"""The Ray-free stages on real generated media with real ffmpeg and yt-dlp."""

import os
import subprocess

import numpy as np
import pytest
import soundfile as sf

from pipeline.engine.sources import expand_playlist_with_ytdlp
from schemas import SourceItem
from stages.clips import ClipOptions, fixed_windows, make_clips
from stages.download import DownloadOptions, download
from stages.errors import StageError
from stages.normalize import NormalizeOptions, count_frames, normalize, probe, target_size


def test_probe_good_and_bad(media_dir):
    p = probe(str(media_dir / "zh_a.mp4"))
    assert p.has_video and p.has_audio and p.width == 480 and abs(p.fps - 25) < 1e-6 and p.duration_s > 2
    assert not probe(str(media_dir / "audio_only.m4a")).has_video
    assert not probe(str(media_dir / "video_only.mp4")).has_audio
    for name, reason in (("empty.mp4", "empty_file"), ("text.mp4", "unreadable"), ("truncated.mp4", "unreadable")):
        with pytest.raises(StageError) as e:
            probe(str(media_dir / name))
        assert e.value.reason == reason, name


@pytest.mark.parametrize(
    "name, opts, reason",
    [
        ("audio_only.m4a", NormalizeOptions(), "no_video"),
        ("video_only.mp4", NormalizeOptions(), "no_audio"),
        ("zh_a.mp4", NormalizeOptions(min_duration_s=60), "too_short"),
        ("zh_a.mp4", NormalizeOptions(max_duration_s=1), "too_long"),
    ],
)
def test_normalize_rejects_with_reason(media_dir, tmp_path, name, opts, reason):
    with pytest.raises(StageError) as e:
        normalize("v", str(media_dir / name), str(tmp_path), opts)
    assert e.value.reason == reason
    assert not os.listdir(tmp_path)  # nothing half-written


def test_normalize_output_format(media_dir, tmp_path):
    src = probe(str(media_dir / "en_b.mp4"))
    m = normalize("en_b", str(media_dir / "en_b.mp4"), str(tmp_path), NormalizeOptions(fps=25, max_height=240))
    out = probe(m.video_path)
    assert (out.width, out.height) == (240, 240) and out.video_codec == "h264" and not out.has_audio
    assert m.num_frames == count_frames(m.video_path) and abs(m.num_frames / 25 - src.duration_s) < 0.1
    info = sf.info(m.audio_path)
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    assert abs(info.frames / 16000 - src.duration_s) < 0.1
    # A second run gives byte-identical files (bit-exact flags, fixed encoder threads).
    m2 = normalize("en_b", str(media_dir / "en_b.mp4"), str(tmp_path / "again"), NormalizeOptions(fps=25, max_height=240))
    assert open(m.video_path, "rb").read() == open(m2.video_path, "rb").read()


def test_target_size_caps_height_and_keeps_even():
    assert target_size(1920, 1080, 720) == (1280, 720)
    assert target_size(481, 361, 720) == (480, 360)
    assert target_size(640, 360, 720) == (640, 360)


def test_clips_cut_on_exact_frames_and_samples(media_dir, tmp_path):
    m = normalize("zh_a", str(media_dir / "zh_a.mp4"), str(tmp_path / "m"))
    opts = ClipOptions(window_s=1.0)
    clips = make_clips(m, "src://zh_a", str(tmp_path / "c"), opts, {"language": "zh"})
    assert len(clips) == m.num_frames // 25
    full, sr = sf.read(m.audio_path, dtype="int16")
    for c in clips:
        assert count_frames(str(tmp_path / "c" / f"{c.key}.mp4")) == 25 == c.num_frames
        audio, sr2 = sf.read(str(tmp_path / "c" / f"{c.key}.wav"), dtype="int16")
        assert sr2 == 16000 and len(audio) == 16000 == c.num_audio_samples
        s0 = round(c.start_s * sr)
        np.testing.assert_array_equal(audio, full[s0 : s0 + 16000])  # exact sample boundaries
        assert c.language == "zh" and c.key == f"zh_a-{c.index:04d}"
    again = make_clips(m, "src://zh_a", str(tmp_path / "c2"), opts, {"language": "zh"})
    assert [c.clip_uid for c in again] == [c.clip_uid for c in clips]  # deterministic ids
    # a keyframe every clips.keyframe_every_s, so a trainer's loader can seek to its window
    long = make_clips(m, "src://zh_a", str(tmp_path / "c3"), ClipOptions(window_s=3.0, max_clips_per_video=1), {})[0]
    probe = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v", "-show_entries", "frame=key_frame", "-of", "csv=p=0",
                            str(tmp_path / "c3" / f"{long.key}.mp4")], capture_output=True, text=True, check=True)
    keys = [i for i, k in enumerate(probe.stdout.split()) if k.startswith("1")]
    gop = round(ClipOptions().keyframe_every_s * 25)
    assert keys[0] == 0 and np.diff(keys + [long.num_frames]).max() <= gop < long.num_frames == 75, keys


def test_fixed_windows():
    assert fixed_windows(130, 25, ClipOptions(window_s=2)) == [(0, 50), (50, 50)]
    assert fixed_windows(130, 25, ClipOptions(window_s=2, min_last_clip_s=1)) == [(0, 50), (50, 50), (100, 30)]
    assert fixed_windows(130, 25, ClipOptions(window_s=2, max_clips_per_video=1)) == [(0, 50)]


def _url_item(vid, uri):
    return SourceItem(video_id=vid, uri=uri, kind="url")


def test_download_http_file_url_and_errors(media_dir, http_server, tmp_path):
    fast = DownloadOptions(retries=0, socket_timeout_s=5)
    r = download(_url_item("h", f"{http_server}/zh_a.mp4"), str(tmp_path / "h"), fast)
    assert r.backend == "http" and open(r.media_path, "rb").read() == (media_dir / "zh_a.mp4").read_bytes()
    assert r.media_path.endswith("source.mp4") and r.provenance.original_id == "zh_a" and r.provenance.webpage_url.endswith("/zh_a.mp4")
    r = download(_url_item("y", f"{http_server}/zh_a.mp4"), str(tmp_path / "y"), fast.model_copy(update={"direct_media": False}))
    assert r.backend == "yt-dlp" and r.info_path and os.path.getsize(r.media_path) == os.path.getsize(media_dir / "zh_a.mp4")
    r = download(_url_item("f", (media_dir / "en_b.mp4").as_uri()), str(tmp_path / "f"), fast)
    assert open(r.media_path, "rb").read() == (media_dir / "en_b.mp4").read_bytes()
    for opts in (fast, fast.model_copy(update={"direct_media": False})):
        with pytest.raises(StageError) as e:
            download(_url_item("n", f"{http_server}/missing.mp4"), str(tmp_path / "n"), opts)
        assert e.value.reason == "not_found" and "404" in e.value.message
    with pytest.raises(StageError) as e:
        download(SourceItem(video_id="p", uri=str(tmp_path / "nope.mp4"), kind="file"), "", fast)
    assert e.value.reason == "not_found"


def test_a_redone_download_is_not_skipped_by_the_archive(http_server, tmp_path):
    from stages.download import forget_archived

    archive, dest = str(tmp_path / "archive.txt"), str(tmp_path / "h")
    fast = DownloadOptions(retries=0, socket_timeout_s=5, direct_media=False)  # the archive is yt-dlp's
    item = _url_item("h", f"{http_server}/zh_a.mp4")
    first = download(item, dest, fast, archive)
    assert open(archive).read().strip() == "generic zh_a"
    os.remove(first.media_path)  # what the pipeline does before it redoes a download
    with pytest.raises(StageError) as e:  # the archive alone would make yt-dlp skip it
        download(item, dest, fast, archive)
    assert e.value.reason in ("archived_without_file", "no_media")
    with open(archive, "a") as f:
        f.write("generic other\n")
    assert forget_archived(archive, first.info_path) and open(archive).read() == "generic other\n"
    again = download(item, dest, fast, archive)
    assert os.path.getsize(again.media_path) == first.size_bytes and "generic zh_a" in open(archive).read()


def test_a_direct_download_continues_its_partial_file_and_keeps_the_size_limit(media_dir, http_server, tmp_path):
    """An interrupted GET left source.mp4.part: the next attempt asks for the rest (Range) and the
    file is whole; a file over download.max_filesize_mb is refused and nothing is left behind."""
    import http.server
    import threading

    whole = (media_dir / "zh_a.mp4").read_bytes()
    dest = tmp_path / "d"
    dest.mkdir()
    (dest / "source.mp4.part").write_bytes(whole[:1000])
    ranges = []

    class Recording(http.server.SimpleHTTPRequestHandler):  # the standard server ignores Range: answer 206 here
        def log_message(self, *args):
            pass

        def do_GET(self):
            ranges.append(self.headers.get("Range"))
            start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
            body = (whole if self.path == "/clip.mp4" else bytes(3 << 19))[start:]
            self.send_response(206 if start else 200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Content-Length", str(len(body)))
            if start:  # an honest 206 says where its bytes start
                self.send_header("Content-Range", f"bytes {start}-{start + len(body) - 1}/{start + len(body)}")
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recording)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/clip.mp4"
        r = download(_url_item("d", url), str(dest), DownloadOptions(retries=0))
        assert ranges == ["bytes=1000-"] and open(r.media_path, "rb").read() == whole and os.listdir(dest) == ["source.mp4"]
        with pytest.raises(StageError) as e:  # 1.5 MiB
            download(_url_item("big", url.replace("clip", "big")), str(tmp_path / "big"), DownloadOptions(retries=0, max_filesize_mb=1))
        assert e.value.reason == "too_large" and os.listdir(tmp_path / "big") == []
    finally:
        server.shutdown()


def test_download_retries_transient_errors_with_backoff(tmp_path):
    # Nothing listens on this port: a connection error is retried, then reported as a network failure.
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    opts = DownloadOptions(retries=2, backoff_s=0.05, socket_timeout_s=2)
    with pytest.raises(StageError) as e:
        download(_url_item("r", f"http://127.0.0.1:{port}/x.mp4"), str(tmp_path), opts)
    assert e.value.reason == "network"


def test_playlist_expansion_with_ytdlp_flat_extraction(media_dir, http_server):
    # yt-dlp's generic extractor reads an RSS feed as a playlist: a real flat extraction, served locally.
    feed = media_dir / "feed.rss"
    items = "".join(
        f"<item><title>{n}</title><link>{http_server}/{n}.mp4</link>"
        f'<enclosure url="{http_server}/{n}.mp4" type="video/mp4" length="1"/><guid>{n}</guid></item>'
        for n in ("zh_a", "en_b")
    )
    feed.write_text(f'<?xml version="1.0"?><rss version="2.0"><channel><title>news</title>{items}</channel></rss>')
    entries = expand_playlist_with_ytdlp(f"{http_server}/feed.rss")
    assert sorted(e["url"] for e in entries) == [f"{http_server}/en_b.mp4", f"{http_server}/zh_a.mp4"]
