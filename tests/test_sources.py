import json
import re

import pytest

from pipeline.engine.sources import make_video_id, read_sources
from schemas import SAFE_ID_PATTERN


def test_ids_are_stable_safe_and_distinct():
    a = make_video_id("https://example.org/news/2026-11-24.mp4")
    assert a == make_video_id("https://example.org/news/2026-11-24.mp4")
    assert a.startswith("2026-11-24-") and "." not in a
    for given in ("../../etc/passwd", "a.b", "a/b", "新闻联播", ".hidden", "x" * 300):
        vid = make_video_id("/x", given)
        assert re.match(SAFE_ID_PATTERN, vid), vid
        assert ".." not in vid and "/" not in vid
    assert make_video_id("/x", "a.b") != make_video_id("/x", "a/b")
    assert make_video_id("/x", "clean_id-1") == "clean_id-1"
    assert make_video_id("https://site/watch?v=abc") != make_video_id("https://site/watch?v=abd")


def test_txt_csv_jsonl(tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"")
    (tmp_path / "s.txt").write_text("# comment\n\nclip.mp4\nhttps://example.org/v/1.mp4\n")
    items = read_sources(tmp_path / "s.txt")
    assert sorted(i.kind for i in items) == ["file", "url"]
    kinds = {i.kind: i for i in items}
    assert kinds["file"].uri == str(tmp_path / "clip.mp4")
    (tmp_path / "s.csv").write_text("url,id,channel,language\nhttps://example.org/a.mp4,cctv_001,CCTV-13,zh\n")
    (item,) = read_sources(tmp_path / "s.csv")
    assert item.video_id == "cctv_001" and item.metadata == {"channel": "CCTV-13", "language": "zh"}
    (tmp_path / "s.jsonl").write_text(json.dumps({"path": "clip.mp4", "id": "../up", "licence": "CC-BY"}) + "\n")
    (item,) = read_sources(tmp_path / "s.jsonl")
    assert item.kind == "file" and item.metadata == {"licence": "CC-BY"} and "." not in item.video_id


def test_errors_name_the_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"url": "https://a/b.mp4"}\n{oops\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        read_sources(tmp_path / "bad.jsonl")
    (tmp_path / "noloc.csv").write_text("id,channel\nx,y\n")
    with pytest.raises(ValueError, match=r"noloc.csv:1: no location"):
        read_sources(tmp_path / "noloc.csv")
    (tmp_path / "dup.csv").write_text("url,id\nhttps://a/1.mp4,same\nhttps://a/2.mp4,same\n")
    with pytest.raises(ValueError, match="already used"):
        read_sources(tmp_path / "dup.csv")
    with pytest.raises(FileNotFoundError):
        read_sources(tmp_path / "missing.txt")


def test_playlist_rows_are_expanded(tmp_path):
    (tmp_path / "s.csv").write_text("url,channel\nhttps://www.youtube.com/playlist?list=PL123,CCTV\n")
    calls = []

    def fake_expand(url):  # the yt-dlp call itself is exercised against a local feed in test_stages
        calls.append(url)
        return [{"url": "https://www.youtube.com/watch?v=AAA", "id": "AAA", "title": "t1", "ie_key": "Youtube"},
                {"url": "https://www.youtube.com/watch?v=BBB", "id": "BBB"}]

    items = read_sources(tmp_path / "s.csv", expand_playlist=fake_expand)
    assert calls == ["https://www.youtube.com/playlist?list=PL123"]
    assert sorted(i.video_id for i in items) == ["BBB", "Youtube_AAA"]
    assert all(i.origin == calls[0] and i.metadata["channel"] == "CCTV" for i in items)


def test_a_failing_playlist_is_reported_not_fatal_and_feeds_cannot_pull_local_files(tmp_path):
    (tmp_path / "s.csv").write_text("url\nhttps://example.org/feed.rss\nhttps://example.org/playlist?list=B\nhttps://example.org/a.mp4\n")

    def expand(url):
        if url.endswith(".rss"):
            raise ConnectionError("no route to host")
        return [{"url": "file:///etc/passwd", "id": "x"}, {"url": "https://example.org/b.mp4", "id": "b"}]

    errors = []
    items = read_sources(tmp_path / "s.csv", expand_playlist=expand, on_error=lambda u, m: errors.append((u, m)))
    assert errors == [("https://example.org/feed.rss", "ConnectionError: no route to host")]
    assert sorted(i.uri for i in items) == ["https://example.org/a.mp4", "https://example.org/b.mp4"]
    with pytest.raises(ConnectionError):
        read_sources(tmp_path / "s.csv", expand_playlist=expand)
