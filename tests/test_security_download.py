"""What a server returns is not trusted (docs/security.md): one test per attack on the download and
normalize stages, each served from 127.0.0.1. An attack must be refused with a named reason, leave
nothing outside the stage's output folder changed, and not get what it was after."""

from __future__ import annotations

import contextlib
import http.server
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from schemas import SourceItem
from stages.download import DownloadOptions, download
from stages.errors import StageError
from stages.normalize import NormalizeOptions, normalize

FAST = dict(retries=0, socket_timeout_s=5)


def _ff(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *args], check=True)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    """A 3 s clip (mp4) and a "secret" local MPEG-TS file an attacker would like to read."""
    d = tmp_path_factory.mktemp("security_media")
    src = ["-f", "lavfi", "-i", "testsrc=s=160x120:r=25:d=3", "-f", "lavfi", "-i", "sine=f=440:d=3", "-shortest",
           "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac"]
    _ff(*src, str(d / "clip.mp4"))
    _ff(*src, "-metadata", "title=SECRET", str(d / "secret.ts"))
    return {"clip": d / "clip.mp4", "secret": d / "secret.ts"}


@contextlib.contextmanager
def serve(respond):
    """A local HTTP/1.0 server; ``respond(handler)`` answers each GET. Yields (base URL, request paths)."""
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            seen.append(self.path)
            try:
                respond(self)
            except (BrokenPipeError, ConnectionResetError):
                pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def _send(h, body: bytes, ctype: str = "video/mp4", status: int = 200, headers: dict | None = None) -> None:
    h.send_response(status)
    h.send_header("Content-Type", ctype)
    h.send_header("Content-Length", str(len(body)))
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    h.end_headers()
    h.wfile.write(body)


def _redirect(h, location: str) -> None:
    h.send_response(302)
    h.send_header("Location", location)
    h.send_header("Content-Length", "0")
    h.end_headers()


def _item(uri: str) -> SourceItem:
    return SourceItem(video_id="v", uri=uri, kind="url")


def _snapshot(root: Path, inside: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` but outside ``inside``: size and mtime."""
    out = {}
    for dirpath, _, names in os.walk(root):
        if Path(dirpath) == inside or inside in Path(dirpath).parents:
            continue
        for n in names:
            st = os.stat(os.path.join(dirpath, n))
            out[os.path.join(dirpath, n)] = (st.st_size, st.st_mtime_ns)
    return out


def _files(d: Path) -> list[Path]:
    return [p for p in d.rglob("*") if p.is_file()] if d.exists() else []


# ---------------------------------------------------------------------------------------------
# 1. file URLs: a served playlist or page may not pull a local file into the download


@pytest.mark.parametrize("page", ["m3u8", "html"])
def test_a_served_playlist_cannot_pull_a_local_file_into_the_download(media, tmp_path, page):
    secret = media["secret"].read_bytes()
    bodies = {
        "m3u8": ("application/vnd.apple.mpegurl",
                 f"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:4\n#EXT-X-MEDIA-SEQUENCE:0\n#EXTINF:3.0,\n"
                 f"{media['secret'].as_uri()}\n#EXT-X-ENDLIST\n"),
        "html": ("text/html", f'<html><body><video controls><source src="{media["secret"].as_uri()}" type="video/mp2t">'
                              f"</video></body></html>"),
    }
    ctype, body = bodies[page]
    dest = tmp_path / "dl"
    before = _snapshot(tmp_path, dest)
    with serve(lambda h: _send(h, body.encode(), ctype)) as (url, _):
        with pytest.raises(StageError) as e:
            download(_item(f"{url}/list.{page}"), str(dest), DownloadOptions(**FAST))
    assert e.value.reason == "file_url_refused" and "file" in e.value.message
    for f in _files(dest):  # not even a piece of the local file reached the download folder
        assert secret[188 * 4: 188 * 40] not in f.read_bytes(), f
    assert not list(dest.glob("source.*"))
    assert _snapshot(tmp_path, dest) == before


def test_a_file_source_still_reads_its_own_file(media, tmp_path):
    """The engineer's own file:// source is trusted (download.allow_file_urls, on by default)."""
    r = download(_item(media["clip"].as_uri()), str(tmp_path / "dl"), DownloadOptions(**FAST))
    assert r.backend == "yt-dlp" and Path(r.media_path).read_bytes() == media["clip"].read_bytes()


# ---------------------------------------------------------------------------------------------
# 2. a playlist saved as source.mp4: normalize must not open it (ffmpeg would read the files it lists)


def _playlists(d: Path, secret: Path) -> dict[str, str]:
    (d / "local.ts").write_bytes(secret.read_bytes())
    return {
        "hls": f"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:4\n#EXT-X-MEDIA-SEQUENCE:0\n#EXTINF:3.0,\n"
               f"{d / 'local.ts'}\n#EXT-X-ENDLIST\n",
        "ffconcat": "ffconcat version 1.0\nfile local.ts\n",
    }


@pytest.mark.parametrize("kind", ["hls", "ffconcat"])
def test_a_playlist_saved_as_mp4_is_refused_by_normalize(media, tmp_path, kind):
    dl = tmp_path / "downloads"
    dl.mkdir()
    (dl / "source.mp4").write_text(_playlists(dl, media["secret"])[kind])
    out = tmp_path / "media"
    before = _snapshot(tmp_path, out)
    with pytest.raises(StageError) as e:
        normalize("v", str(dl / "source.mp4"), str(out), NormalizeOptions(min_duration_s=0.5))
    assert e.value.reason == "unsafe_container" and "source.mp4" in e.value.message
    assert _files(out) == []  # nothing made from the local .ts
    assert _snapshot(tmp_path, out) == before


def test_the_demuxer_allow_list_holds_without_the_first_bytes_check(media, tmp_path, monkeypatch):
    """ffprobe/ffmpeg themselves refuse a playlist demuxer (-format_whitelist), not only the byte sniff."""
    import stages.normalize as norm

    monkeypatch.setattr(norm, "_sniff", lambda path: None)
    (tmp_path / "source.mp4").write_text(_playlists(tmp_path, media["secret"])["hls"])
    with pytest.raises(StageError) as e:
        norm.probe(str(tmp_path / "source.mp4"))
    assert e.value.reason == "unsafe_container" and "hls" in e.value.message
    with pytest.raises(StageError) as e:  # an allowed list without mpegts refuses a real .ts too
        norm.check_container(str(tmp_path / "local.ts"), ("mov", "mp4", "matroska"))
    assert e.value.reason == "unsafe_container" and "mpegts" in e.value.message


@pytest.mark.parametrize("path", ["direct", "yt-dlp"])
def test_a_playlist_served_as_a_media_file_is_refused_by_download(media, tmp_path, path):
    """Caught at download already (before yt-dlp's merger/fixups run ffmpeg on it), and not kept."""
    www = tmp_path / "www"
    www.mkdir()
    body = _playlists(www, media["secret"])["ffconcat"].encode()
    dest = tmp_path / "dl"
    before = _snapshot(tmp_path, dest)
    with serve(lambda h: _send(h, body)) as (url, _):
        with pytest.raises(StageError) as e:
            download(_item(f"{url}/clip.mp4"), str(dest), DownloadOptions(**FAST, direct_media=path == "direct"))
    assert e.value.reason == "unsafe_container"
    assert not list(dest.glob("source.*"))
    assert _snapshot(tmp_path, dest) == before


# ---------------------------------------------------------------------------------------------
# 3a. a trickling server: the deadline and the minimum speed hold, on both download paths


def _trickle_body(h) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "video/mp4")
    h.send_header("Content-Length", str(10_000_000))
    h.end_headers()
    h.wfile.flush()
    for _ in range(60):
        h.wfile.write(b"\0")
        h.wfile.flush()
        time.sleep(1.0)


def _trickle_headers(h) -> None:
    h.wfile.write(b"HTTP/1.0 200 OK\r\nContent-Type: video/mp4\r\nX-Slow: ")
    for _ in range(60):
        h.wfile.write(b"a")
        h.wfile.flush()
        time.sleep(1.0)


@pytest.mark.parametrize("path, server, limit, reason", [
    ("direct", _trickle_body, dict(deadline_s=3, min_bytes_per_s=0), "deadline"),
    ("direct", _trickle_headers, dict(deadline_s=3, min_bytes_per_s=0), "deadline"),
    ("yt-dlp", _trickle_body, dict(deadline_s=3, min_bytes_per_s=0), "deadline"),
    ("direct", _trickle_body, dict(deadline_s=60, min_bytes_per_s=1024, slow_window_s=2), "too_slow"),
    ("yt-dlp", _trickle_body, dict(deadline_s=60, min_bytes_per_s=1024, slow_window_s=2), "too_slow"),
])
def test_a_trickling_server_does_not_hold_the_worker(tmp_path, path, server, limit, reason):
    dest = tmp_path / "dl"
    opts = DownloadOptions(**FAST, **limit, direct_media=path == "direct")
    with serve(server) as (url, _):
        t0 = time.monotonic()
        with pytest.raises(StageError) as e:
            download(_item(f"{url}/clip.mp4"), str(dest), opts)
        took = time.monotonic() - t0
    bound = limit["deadline_s"] if reason == "deadline" else limit["slow_window_s"]
    assert e.value.reason == reason and bound <= took + 0.3 and took < bound + 4.0, (e.value, took)
    # no finished file (a .part may stay for a later attempt to continue)
    assert not [p for p in dest.glob("source.*") if not p.name.endswith((".part", ".ytdl", ".json"))]


# ---------------------------------------------------------------------------------------------
# 3b. redirects (and URLs in what a server returns) may not reach private addresses


@contextlib.contextmanager
def _internal_and_public(media):
    """``internal``: a service on another loopback port (stands for a private address); ``public``:
    the source's own server, which sends the client there."""
    clip = media["clip"].read_bytes()
    with serve(lambda h: _send(h, clip)) as (internal, internal_seen):
        def public(h):
            if h.path == "/redirect.mp4":
                _redirect(h, f"{internal}/secret.mp4")
            elif h.path == "/list.m3u8":
                _send(h, f"#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:3.0,\n{internal}/seg.ts\n#EXT-X-ENDLIST\n".encode(),
                      "application/vnd.apple.mpegurl")
            elif h.path.startswith("/loop"):
                _redirect(h, f"/loop{len(h.path)}.mp4")
            elif h.path == "/moved.mp4":
                _redirect(h, "/clip.mp4")
            else:
                _send(h, clip)

        with serve(public) as (url, _):
            yield url, internal_seen


@pytest.mark.parametrize("path, page", [("direct", "redirect.mp4"), ("yt-dlp", "redirect.mp4"), ("yt-dlp", "list.m3u8")])
def test_a_redirect_to_a_private_address_is_refused(media, tmp_path, path, page):
    dest = tmp_path / "dl"
    before = _snapshot(tmp_path, dest)
    opts = DownloadOptions(**FAST, direct_media=path == "direct")
    with _internal_and_public(media) as (url, internal_seen):
        with pytest.raises(StageError) as e:
            download(_item(f"{url}/{page}"), str(dest), opts)
        assert e.value.reason == "private_address" and "127.0.0.1" in e.value.message
        assert internal_seen == []  # not one request reached the internal service
        assert not list(dest.glob("source.*")) and _snapshot(tmp_path, dest) == before
        # the engineer may allow it; the source's own server may redirect within itself
        allowed = download(_item(f"{url}/{page}"), str(tmp_path / "ok"), opts.model_copy(update={"allow_private_redirects": True}))
        assert internal_seen and os.path.getsize(allowed.media_path) > 0
        own = download(_item(f"{url}/moved.mp4"), str(tmp_path / "own"), opts)
        assert Path(own.media_path).read_bytes() == media["clip"].read_bytes()


@pytest.mark.parametrize("path", ["direct", "yt-dlp"])
def test_redirects_are_capped(media, tmp_path, path):
    with _internal_and_public(media) as (url, _):
        with pytest.raises(StageError) as e:
            download(_item(f"{url}/loop.mp4"), str(tmp_path / "dl"), DownloadOptions(**FAST, max_redirects=3, direct_media=path == "direct"))
    assert e.value.reason == "too_many_redirects"


def test_yt_dlp_does_not_hand_a_served_stream_to_ffmpeg(tmp_path):
    """HLS that yt-dlp's own downloader declines (here SAMPLE-AES) would go to ffmpeg, whose requests
    (redirects, hosts) nothing checks: refused unless download.allow_ffmpeg_fetch."""
    body = b'#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXT-X-KEY:METHOD=SAMPLE-AES,URI="key.bin"\n#EXTINF:3.0,\nseg.ts\n#EXT-X-ENDLIST\n'
    with serve(lambda h: _send(h, body, "application/vnd.apple.mpegurl")) as (url, seen):
        with pytest.raises(StageError) as e:
            download(_item(f"{url}/list.m3u8"), str(tmp_path / "dl"), DownloadOptions(**FAST))
    assert e.value.reason == "external_fetch_disabled" and set(seen) == {"/list.m3u8"}  # no key, no segment


# ---------------------------------------------------------------------------------------------
# 3c. a resumed download must continue exactly where the partial file ends


@pytest.mark.parametrize("answer", ["wrong_range", "no_range", "honest"])
def test_a_lying_206_does_not_corrupt_the_resumed_file(media, tmp_path, answer):
    whole = media["clip"].read_bytes()
    ranges = []

    def respond(h):
        ranges.append(h.headers.get("Range"))
        start = int(h.headers["Range"].split("=")[1].rstrip("-")) if h.headers.get("Range") else 0
        if not start:
            return _send(h, whole)
        if answer == "honest":
            return _send(h, whole[start:], status=206, headers={"Content-Range": f"bytes {start}-{len(whole) - 1}/{len(whole)}"})
        # a 206 that starts at 0 whatever was asked for
        return _send(h, whole, status=206, headers={"Content-Range": f"bytes 0-{len(whole) - 1}/{len(whole)}"} if answer == "wrong_range" else {})

    dest = tmp_path / "dl"
    dest.mkdir()
    (dest / "source.mp4.part").write_bytes(whole[:1000])
    with serve(respond) as (url, _):
        r = download(_item(f"{url}/clip.mp4"), str(dest), DownloadOptions(**FAST))
    assert Path(r.media_path).read_bytes() == whole and os.listdir(dest) == ["source.mp4"]
    assert ranges == (["bytes=1000-"] if answer == "honest" else ["bytes=1000-", None])  # dropped and fetched whole


# ---------------------------------------------------------------------------------------------
# 4. normalize leaves no partial file when ffmpeg runs past its time limit


def test_a_normalize_timeout_leaves_no_partial_files(tmp_path):
    src = tmp_path / "long.mp4"
    _ff("-f", "lavfi", "-i", "testsrc2=s=640x360:r=25:d=20", "-f", "lavfi", "-i", "sine=d=20", "-shortest",
        "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", str(src))
    out = tmp_path / "media"
    opts = NormalizeOptions(deinterlace="never", passthrough=False, preset="veryslow", timeout_s=1.5)
    with pytest.raises(StageError) as e:
        normalize("v", str(src), str(out), opts)
    assert e.value.reason == "timeout"
    assert os.listdir(out) == []


@pytest.mark.parametrize("path", ["direct", "yt-dlp"])
def test_a_feed_entry_may_not_point_at_an_internal_address(media, tmp_path, path):
    """A playlist or feed the engineer listed is trusted for its own host only: an entry it expanded
    to (``origin`` set) on another, internal address is refused before any request reaches it."""
    clip = media["clip"].read_bytes()
    with serve(lambda h: _send(h, clip)) as (internal, internal_seen), serve(lambda h: _send(h, clip)) as (feed_host, _):
        entry = SourceItem(video_id="v", uri=f"{internal}/secret.mp4", kind="url", origin=f"{feed_host}/feed.xml")
        with pytest.raises(StageError) as e:
            download(entry, str(tmp_path / "dl"), DownloadOptions(**FAST, direct_media=path == "direct"))
        assert e.value.reason == "private_address" and internal_seen == []
        # an entry on the feed's own host is fetched
        own = SourceItem(video_id="w", uri=f"{feed_host}/clip.mp4", kind="url", origin=f"{feed_host}/feed.xml")
        got = download(own, str(tmp_path / "own"), DownloadOptions(**FAST, direct_media=path == "direct"))
        assert Path(got.media_path).read_bytes() == clip
