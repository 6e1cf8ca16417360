"""The yt-dlp fetcher: any site yt-dlp supports, run in a child process of its own session so that
the deadline holds whatever yt-dlp is blocked on, and the checks it installs (addresses, URL
schemes, containers, pace) touch no state of the worker; plus the download archive's upkeep.
"""

from __future__ import annotations

import json
import os
import time

from schemas import DownloadResult, SourceItem

from ..errors import StageError
from ..normalize import check_container
from .common import (MEDIA_BASENAME, REFUSED, DownloadOptions, classify_download_error, clean_message, drop_media, find_media,
                     provenance_from_info, url_scheme)
from .guard import AddressPolicy, Pace, trusted_origin

def ytdlp_download(item: SourceItem, dest_dir: str, options: DownloadOptions, archive_file: str | None,
                    deadline: float) -> DownloadResult:
    """yt-dlp in a child process of its own session: the deadline holds whatever yt-dlp is blocked
    on (the child and anything it started are killed), and the checks it installs (addresses,
    URL schemes, containers, pace; ``run_child``) touch no state of this process."""
    import signal
    import subprocess
    import sys

    job = {"uri": item.uri, "trusted_uri": trusted_origin(item), "dest_dir": dest_dir, "options": options.model_dump(mode="json"), "archive_file": archive_file,
           "seconds": max(0.0, deadline - time.monotonic())}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.Popen([sys.executable, "-c", "from stages.download.ytdlp import run_child; run_child()"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(json.dumps(job).encode(), timeout=job["seconds"] + 5.0)
    except subprocess.TimeoutExpired:  # the child's own watchdog did not end it (stuck without the GIL?)
        os.killpg(proc.pid, signal.SIGKILL)  # not reaped yet: the group id is still the child's
        proc.communicate()
        raise StageError("deadline", f"the download ran past download.deadline_s ({options.deadline_s:g} s)") from None
    try:
        result = json.loads(out.decode("utf-8", "replace").strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise StageError("downloader_crashed", f"the yt-dlp process exited {proc.returncode} without a result: "
                                               f"{clean_message(err.decode('utf-8', 'replace').strip()[-500:]) or 'no message'}") from None
    if "error" in result:
        raise StageError(*result["error"])
    media = find_media(dest_dir)
    if media is None:
        if result.get("info_none") and archive_file:
            raise StageError(
                "archived_without_file",
                f"{item.uri} is in the download archive {archive_file} but its file is gone; remove that line to re-download",
            )
        raise StageError("no_media", f"yt-dlp finished but wrote no media file for {item.uri}")
    info_path = os.path.join(dest_dir, f"{MEDIA_BASENAME}.info.json")
    info: dict = {}
    if os.path.exists(info_path):
        try:
            with open(info_path, encoding="utf-8") as f:
                info = json.load(f) or {}
        except (OSError, ValueError):
            pass
    return DownloadResult(
        video_id=item.video_id,
        source_uri=item.uri,
        media_path=media,
        info_path=info_path if os.path.exists(info_path) else None,
        size_bytes=os.path.getsize(media),
        backend="yt-dlp",
        title=info.get("title"),
        provenance=provenance_from_info(item.uri, info),
    )


def _ytdlp_options(options: DownloadOptions, dest_dir: str, archive_file: str | None, file_source: bool) -> dict:
    h = options.max_height
    ydl_opts = {
        # Best video+audio under the height cap, else the best single file under it, else anything.
        "format": f"bv*[height<={h}]+ba/b[height<={h}]/bv*+ba/b",
        "outtmpl": {"default": os.path.join(dest_dir, f"{MEDIA_BASENAME}.%(ext)s")},
        "paths": {"home": dest_dir, "temp": dest_dir},
        "writeinfojson": True,
        "quiet": True,
        "no_warnings": True,
        "noprogress": True,
        "noplaylist": True,
        "retries": options.retries,
        "fragment_retries": options.retries,
        "retry_sleep_functions": {"http": lambda n: min(30.0, options.backoff_s * 2**n)},
        "socket_timeout": options.socket_timeout_s,
        # file:// only for a file:// source: a page or playlist from a server never reaches a local file
        "enable_file_urls": file_source and options.allow_file_urls,
        # m3u8 formats go to yt-dlp's own HLS downloader (whose requests are checked), not to ffmpeg
        "hls_prefer_native": True,
        "restrictfilenames": True,
        "overwrites": False,
        "continuedl": True,
    }
    if options.rate_limit:
        from yt_dlp.utils import parse_bytes

        ydl_opts["ratelimit"] = parse_bytes(options.rate_limit)
    if options.cookies_file:
        ydl_opts["cookiefile"] = options.cookies_file
    if archive_file:
        ydl_opts["download_archive"] = archive_file
    if options.max_filesize_mb:
        ydl_opts["max_filesize"] = options.max_filesize_mb * 1024 * 1024
    return ydl_opts


def run_child() -> None:
    """The child process of ``ytdlp_download``: reads the job (JSON) from stdin, writes one JSON line
    (``{"ok": …}`` or ``{"error": [reason, message]}``) to stdout; yt-dlp's own output goes to stderr.

    For an http(s) source it installs, in this process only: every TCP connection must go to an
    address the ``AddressPolicy`` allows (checked on the address connected to: redirects, URLs found
    in pages and playlists, any request of any extractor); every URL yt-dlp opens must be http(s) or
    data; redirects are capped; yt-dlp may not hand a stream to ffmpeg/rtmpdump (unless
    ``allow_ffmpeg_fetch``). For every source: each downloaded file must pass the container check
    before yt-dlp's post-processors (merge, fixups: ffmpeg) open it; a watchdog thread ends the
    process at the deadline or when it is too slow. A refusal ends the process at once (its whole
    process group, so an ffmpeg it started goes too) after writing the result."""
    import signal
    import socket
    import ssl
    import sys
    import threading

    result_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything printed by yt-dlp goes to stderr; stdout is the result line
    job = json.load(sys.stdin)
    options = DownloadOptions.model_validate(job["options"])
    uri, dest_dir = job["uri"], job["dest_dir"]
    file_source = url_scheme(uri) == "file"
    lock = threading.Lock()

    def finish(result: dict, stop: bool) -> None:
        with lock:  # one result, even when the watchdog and the main thread both end it
            result_out.write(json.dumps(result) + "\n")
            result_out.flush()
            if stop:
                os.killpg(os.getpgid(0), signal.SIGKILL)  # this process and whatever it started (own session)
            os._exit(0)

    def refuse(reason: str, message: str) -> None:
        if reason in REFUSED:
            drop_media(dest_dir)
        finish({"error": [reason, message]}, stop=True)

    received = [0]  # bytes read from sockets (any thread; a lower bound is all the pace needs)

    def counting(method):
        def read(self, *args, **kwargs):
            n = method(self, *args, **kwargs)
            received[0] += n if isinstance(n, int) else len(n)
            return n
        return read

    socket.socket.recv_into = counting(socket.socket.recv_into)
    socket.socket.recv = counting(socket.socket.recv)
    ssl.SSLSocket.recv_into = counting(ssl.SSLSocket.recv_into)
    ssl.SSLSocket.recv = counting(ssl.SSLSocket.recv)

    def on_disk() -> int:
        try:
            return sum(e.stat().st_size for e in os.scandir(dest_dir) if e.is_file())
        except OSError:
            return 0

    pace = Pace(options, time.monotonic() + job["seconds"])
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(0.25)
            if os.getppid() != parent:  # the worker that started this download is gone
                refuse("network", "the process that started the download ended")
            trip = pace.trip(received[0] + on_disk())
            if trip:
                refuse(*trip)

    threading.Thread(target=watch, daemon=True, name="download-watchdog").start()

    import yt_dlp
    from yt_dlp.utils import sanitize_url

    if not file_source:
        policy = AddressPolicy(job.get("trusted_uri", uri), options)
        trusted = policy.trusted_ips()
        plain_connect, plain_connect_ex = socket.socket.connect, socket.socket.connect_ex

        def check(sock, address) -> None:
            if sock.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple):
                ip, port = address[0], address[1]
                if (ip, port) not in trusted:
                    try:
                        policy.check(ip, port, [ip], "a connection to")
                    except StageError as e:
                        refuse(e.reason, e.message)

        def connect(sock, address):
            check(sock, address)
            return plain_connect(sock, address)

        def connect_ex(sock, address):
            check(sock, address)
            return plain_connect_ex(sock, address)

        socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
        # at most max_redirects redirects per request, in both of yt-dlp's HTTP handlers
        import urllib.request

        urllib.request.HTTPRedirectHandler.max_redirections = options.max_redirects
        try:
            import requests.sessions

            requests.sessions.DEFAULT_REDIRECT_LIMIT = options.max_redirects
        except ImportError:
            pass
        from yt_dlp.downloader.external import ExternalFD
        from yt_dlp.downloader.rtmp import RtmpFD

        def external(plain):
            def real_download(self, filename, info_dict):
                urls = [f.get("url") or "" for f in (info_dict.get("requested_formats") or [info_dict])]
                if not options.allow_ffmpeg_fetch:
                    refuse("external_fetch_disabled", f"yt-dlp would hand the stream to {self.get_basename()}, whose requests "
                                                      "are not checked (download.allow_ffmpeg_fetch=true allows it)")
                if any(url_scheme(u) not in ("http", "https") for u in urls):
                    refuse("unsafe_url", f"refused to let {self.get_basename()} open a non-http(s) URL from the server")
                return plain(self, filename, info_dict)
            return real_download

        ExternalFD.real_download = external(ExternalFD.real_download)
        RtmpFD.real_download = external(RtmpFD.real_download)

    class YDL(yt_dlp.YoutubeDL):
        def urlopen(self, req):
            if not file_source:
                url = req if isinstance(req, str) else (req.get_full_url() if hasattr(req, "get_full_url") else req.url)
                scheme = url_scheme(sanitize_url(url))
                if scheme not in ("http", "https", "data"):
                    refuse("file_url_refused" if scheme == "file" else "unsafe_url",
                           f"refused a {scheme or 'scheme-less'} URL from the server: {url[:200]}")
            return super().urlopen(req)

        def post_process(self, filename, info, *args, **kwargs):
            # before the merger and the fixups run ffmpeg/ffprobe on what was downloaded
            for path in {*(info.get("__files_to_merge") or []), filename}:
                if path and os.path.isfile(path):
                    try:
                        check_container(path)
                    except StageError as e:
                        refuse(e.reason, e.message)
            return super().post_process(filename, info, *args, **kwargs)

    try:
        with YDL(_ytdlp_options(options, dest_dir, job["archive_file"], file_source)) as ydl:
            info = ydl.extract_info(uri, download=True)
    except yt_dlp.utils.DownloadError as e:
        reason, _ = classify_download_error(str(e))
        finish({"error": [reason, clean_message(str(e))]}, stop=False)
    except Exception as e:  # yt-dlp extractors raise many types; record, never crash the run
        reason, _ = classify_download_error(str(e))
        finish({"error": [reason, f"{type(e).__name__}: {clean_message(str(e))}"]}, stop=False)
    finish({"ok": True, "info_none": info is None}, stop=False)


def forget_archived(archive_file: str, info_path: str) -> bool:
    """Remove the download-archive line of the video described by ``info_path`` (yt-dlp's info.json),
    so that a download the pipeline decided to redo (other options, another run) is not skipped by
    yt-dlp. Returns whether a line was removed. The archive is locked while it is rewritten (yt-dlp
    locks it the same way when it appends)."""
    import fcntl

    try:
        with open(info_path, encoding="utf-8") as f:
            info = json.load(f)
        line = f"{str(info['extractor_key']).lower()} {info['id']}"
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if not os.path.exists(archive_file):
        return False
    with open(archive_file, "r+", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        lines = f.read().splitlines()
        kept = [ln for ln in lines if ln.strip() != line]
        if len(kept) != len(lines):
            f.seek(0)
            f.write("".join(ln + "\n" for ln in kept))
            f.truncate()
        fcntl.flock(f, fcntl.LOCK_UN)
    return len(kept) != len(lines)


