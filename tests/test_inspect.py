"""`cnas inspect`: contact sheets and the HTML report of a run and of a release, checked in headless
Chromium (Debian's chromium + chromium-driver, installed by `make setup`)."""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import CliResult, cnas
from pipeline.engine.config import load_config
from pipeline.engine.ledger import read_entry
from pipeline.release.package import package_release
from pipeline.inspect.sheets import _box_to_pixels, _to_pixels, frame_indices
from stages.frames import read_frames_exact
from pipeline.engine.workdir import WorkDir
from schemas import ClipSet

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def _cnas(*args: str) -> CliResult:
    """`cnas inspect|validate` in process (tests/cli_helpers.py): these tests check the files and the lines it writes."""
    return cnas(*args)


@pytest.fixture(scope="module")
def report(dub_run):
    run, genuine, dub = dub_run
    p = _cnas("inspect", str(run), "--max-clips", "3", "--frames", "4")
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.strip() == f"report: {run / 'inspect' / 'index.html'}"
    return run / "inspect", run, genuine, dub


class Browser:
    """Headless Chromium through ChromeDriver, with the page's console log."""

    def __init__(self):
        if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
            pytest.fail("Debian's chromium and chromium-driver are required (make setup installs them)")
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        # the closed network: no background connections, no component updates (docs of this machine)
        for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"):
            opts.add_argument(a)
        self.profile = tempfile.mkdtemp(prefix="cnas-chromium-")
        opts.add_argument(f"--user-data-dir={self.profile}")
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
        self.driver.execute_cdp_cmd("Network.enable", {})
        self.driver.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": True})  # every load asks the server

    def load(self, url: str) -> tuple[list[dict], list[dict]]:
        """Open ``url``; (images as src/complete/width, console entries of level SEVERE or WARNING)."""
        self.driver.get(url)
        assert self.driver.execute_script("return document.readyState") == "complete"
        images = self.driver.execute_script(
            "return Array.from(document.images).map(i => ({src: i.getAttribute('src'), complete: i.complete, width: i.naturalWidth}))")
        console = [e for e in self.driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
        return images, console

    def close(self):
        self.driver.quit()
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    b = Browser()
    yield b
    b.close()


def _serve(folder: Path):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def test_frame_indices_and_pixel_mapping():
    assert frame_indices(100, 4) == [12, 37, 62, 87]
    assert frame_indices(3, 8) == [0, 1, 2]
    # a landmark at the centre of a 640x360 normalised frame, clip cropped at x=160 (side 360) and drawn at 288 px
    assert np.allclose(_to_pixels(np.array([0.5, 0.5, 0.0]), (640, 360), [160, 0, 360], (288, 288)), [128, 144])
    assert np.allclose(_to_pixels(np.array([0.5, 0.5, 0.0]), (640, 360), None, (320, 180)), [160, 90])
    assert np.allclose(_box_to_pixels(np.array([160, 0, 520, 360]), [160, 0, 360], (640, 360), (288, 288)), [0, 0, 288, 288])


def test_read_frames_returns_the_frames_asked_for(tmp_path):
    """A counter video: frame i is grey level 10*i; frames come back by index, and too few is an error."""
    frames = np.repeat(np.arange(0, 200, 10, dtype=np.uint8)[:, None, None, None], 64, 1).repeat(64, 2).repeat(3, 3)
    path = str(tmp_path / "count.mp4")
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "64x64", "-r", "25",
                    "-i", "-", "-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv444p", path], input=frames.tobytes(), check=True)
    got = read_frames_exact(path, [1, 7], 64, 64, start=3)
    assert [int(round(f.mean())) for f in got] == [40, 100]
    with pytest.raises(ValueError, match="ends at frame 20"):
        read_frames_exact(path, [25], 64, 64)


def test_reject_spans_are_recorded_with_the_counts(dub_run):
    run, genuine, dub = dub_run
    entry = read_entry(WorkDir(str(run / "work")), dub.name, "clips")
    clip_set = ClipSet.model_validate(entry.output)
    assert clip_set.reject_spans, clip_set
    for reason, n in clip_set.rejects.items():
        spans = [s for s in clip_set.reject_spans if s.reason == reason]
        assert 1 <= len(spans) <= 5 * n
        # examples are the longest of each reason: never more seconds than were rejected
        assert sum(s.end_s - s.start_s for s in spans) <= clip_set.rejected_s[reason] + 0.05
    assert all(0 <= s.start_s < s.end_s for s in clip_set.reject_spans)


def test_run_report_has_sheets_of_clips_and_of_rejects(report):
    folder, run, genuine, dub = report
    page = (folder / "index.html").read_text()
    manifest = [json.loads(l) for l in (run / "manifest.jsonl").read_text().splitlines()]
    stats = json.loads((run / "stats.json").read_text())
    for row in manifest[:3]:
        assert (folder / "sheets" / f"{row['key']}.png").stat().st_size > 10_000
        assert f"sheets/{row['key']}.png" in page
    for reason in stats["rejects_by_reason"]:
        assert f"<h3>{reason}</h3>" in page
    rejects = sorted((folder / "sheets").glob(f"reject-*-{dub.name}-*.png"))
    assert rejects, sorted(os.listdir(folder / "sheets"))
    for stage in stats["stage_timings"]:
        assert f"<td>{stage}</td>" in page
    for name in ("durations", "speakers", "part_confidence", "audio", "stage_timings"):
        assert (folder / "plots" / f"{name}.png").exists()
    # where each video's seconds went: one row per video, the dub's rejected seconds by reason
    assert "Where each video&#x27;s seconds went" in page or "Where each video's seconds went" in page
    dub_row = page[page.index(f"<td>{dub.name}</td>"):].split("</tr>")[0]
    assert any(reason in dub_row for reason in stats["rejects_by_reason"]), dub_row


def test_clip_sheet_draws_the_landmarks_on_the_face(dub_run, tmp_path):
    """The face mesh is drawn where the face is: the sheet differs from the bare frame inside the
    clip's face box and hardly outside it."""
    from pipeline.release.files import iter_tar_samples
    from pipeline.inspect.sheets import draw_sheet, sheet_from_sample

    run, _, _ = dub_run
    key, members = next(iter_tar_samples(str(sorted((run / "shards").glob("*.tar"))[0])))
    data = sheet_from_sample(members, count=2)
    assert len(data.frames) == 2 and data.points and data.boxes
    face = data.points[0]["face0"]
    box = data.boxes[0]["face"]
    inside = (face[:, 0] >= box[0] - 2) & (face[:, 0] <= box[2] + 2) & (face[:, 1] >= box[1] - 2) & (face[:, 1] <= box[3] + 2)
    assert inside[np.isfinite(face).all(axis=1)].mean() > 0.95
    assert data.head_pose[0] is not None and abs(data.head_pose[0][0]) < 35  # the demo anchor faces the camera
    out = draw_sheet(data, str(tmp_path / "s.png"))
    assert Path(out).stat().st_size > 10_000
    p = _cnas("inspect", str(run), "--clip", key, "--out", str(tmp_path / "one"))
    assert p.returncode == 0 and (tmp_path / "one" / f"{key}.png").exists(), p.stderr
    p = _cnas("inspect", str(run), "--clip", "no_such-0000")
    assert p.returncode == 1 and "not in" in p.stderr


def test_run_report_loads_in_chromium_with_every_image(report, browser):
    folder, *_ = report
    server, url = _serve(folder)
    try:
        images, console = browser.load(f"{url}/index.html")
        files = {str(p.relative_to(folder)) for p in folder.rglob("*.png")}
        assert {i["src"] for i in images} == files
        broken = [i for i in images if not (i["complete"] and i["width"] > 0)]
        assert not broken and not console, (broken, console)
        # the check can fail: a missing sheet is a broken image and a console error
        victim = folder / sorted(files)[0]
        data = victim.read_bytes()
        victim.unlink()
        try:
            images, console = browser.load(f"{url}/index.html?again")
        finally:
            victim.write_bytes(data)
        assert [i["src"] for i in images if i["width"] == 0] == [sorted(files)[0]]
        assert any("404" in e["message"] for e in console), console
    finally:
        server.shutdown()


def test_release_report_leaves_the_release_untouched(dub_run, tmp_path, browser):
    run, _, _ = dub_run
    rel = tmp_path / "release"
    cfg = load_config(None, ["release.split_ratios={train: 1.0}"]).release
    package_release(str(run), "0.1", str(rel), cfg)
    before = sorted(str(p.relative_to(rel)) for p in rel.rglob("*"))
    p = _cnas("inspect", str(rel), "--run", str(run), "--max-clips", "2", "--frames", "4")
    assert p.returncode == 0, p.stderr
    folder = tmp_path / "release-inspect"
    assert p.stdout.strip() == f"report: {folder / 'index.html'}"
    assert sorted(str(p.relative_to(rel)) for p in rel.rglob("*")) == before
    assert _cnas("validate", str(rel)).returncode == 0
    page = (folder / "index.html").read_text()
    n = len((run / "manifest.jsonl").read_text().splitlines())
    assert f"train: first {min(2, n)} clips of {n}" in page and "plots/durations.png" in page and "Time per stage (ingest run)" in page
    server, url = _serve(folder)
    try:
        images, console = browser.load(f"{url}/index.html")
        assert images and all(i["complete"] and i["width"] > 0 for i in images) and not console, (images, console)
    finally:
        server.shutdown()
