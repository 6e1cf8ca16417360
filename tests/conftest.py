"""Shared fixtures: generated talking-person videos, broken inputs, one Ray session per test run."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two test processes share the 2 cores: two torch/OpenMP pools of 2 threads each spin against each
    # other (20-40x slower steps, measured). One thread per worker keeps both cores busy without that.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from pipeline.demo.inputs import DemoVideo, make_talking_video

#: Fixtures whose setup runs the ingest DAG or a CLI end to end, renders many videos, or loads or
#: trains models (each over a second here; measured with ``--durations=0``). A test that uses one
#: is marked ``e2e`` or ``models`` and left out of ``make test-fast``; ``make test`` runs it.
E2E_FIXTURES = frozenset({"ray_session", "dub_run", "flame_run", "view_shards", "media_dir", "quiet_run", "real_run", "run_dir", "built",
                          "release", "released", "meta_release", "report", "catalogue", "broll_then_anchor", "talking",
                          "three_videos"})
MODEL_FIXTURES = frozenset({"pose_models", "models_en", "models_zh", "controllable", "data", "probe", "runs", "shards", "trained",
                            "trained_pce", "trained_univdm"})


#: Fixtures that start Ray (in this process, in a ``cnas`` subprocess, or as a cluster). Every test that
#: uses one runs in the one ``ray`` xdist group, one after another on one worker: two Ray instances side
#: by side once left an ingest's actor pool waiting forever for an actor Ray had created
#: (docs/BENCHMARKS.md "Test suite time"). The other worker runs everything else meanwhile.
RAY_FIXTURES = frozenset({"ray_session", "quiet_run", "two_node_cluster"})

#: Session fixtures cheap enough to build once per xdist worker; every other session fixture ties the
#: tests that use it to one worker (``_share_groups``), so a shared run is built once.
CHEAP_SESSION_FIXTURES = frozenset({"ray_session", "media_dir", "http_server", "pose_models", "tmp_path_factory",
                                    "worker_id", "testrun_uid", "emotion_classifier"})


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which turns the xdist_group marks into scheduling groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        used = set(item.fixturenames)
        if used & E2E_FIXTURES:
            item.add_marker(pytest.mark.e2e)
        if used & MODEL_FIXTURES:
            item.add_marker(pytest.mark.models)
        if used & RAY_FIXTURES:
            item.add_marker(pytest.mark.ray)
    groups = _share_groups(items)
    for item, group in groups.items():
        item.add_marker(pytest.mark.xdist_group(group))
    # the Ray group is the longest: first in the queue, so its worker starts on it at once
    items.sort(key=lambda item: groups.get(item) != "ray")


def _share_groups(items) -> dict:
    """For ``pytest -n 2 --dist loadgroup``: tests that share a costly fixture run on one worker (union-find
    over the tests, their module- and class-scoped fixtures and their costly session fixtures), so it
    is built once; every test that starts Ray joins the group ``ray`` (its module-scoped fixtures do
    not pull other tests in). Tests sharing nothing get no group and are spread one by one."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra == rb:
            return
        if ra == "ray":  # "ray" stays a root, so the group keeps its name
            parent[rb] = ra
        else:
            parent[ra] = rb

    shared: dict = {}
    for item in items:
        module = item.nodeid.split("::")[0]
        ray = bool(set(item.fixturenames) & RAY_FIXTURES)
        nodes = ["ray"] if ray else []
        for name, defs in item._fixtureinfo.name2fixturedefs.items():
            scope = defs[-1].scope if defs else "function"
            # a Ray test does not pull its module's other tests into the (serial) Ray group: a module
            # fixture they share is built on each worker instead (seconds, against minutes of waiting)
            if scope in ("module", "class", "package") and not ray:
                nodes.append(f"{scope}:{module}:{name}")
            elif scope == "session" and name not in CHEAP_SESSION_FIXTURES:
                nodes.append("fixture:" + name)
        for n in nodes[1:]:
            union(n, nodes[0])
        if nodes:
            shared[item] = nodes[0]
    return {item: find(node) for item, node in shared.items()}


SHORT_VIDEOS = (
    DemoVideo("zh_a", "astronaut", "cmn-latn-pinyin", "da4 jia1 hao3, jin1 tian1 tian1 qi4 hen3 hao3."),
    DemoVideo("en_b", "astronaut", "en-us", "Good evening, here is the news.", mirror=True),  # frontal (the camera photo is a profile: non_frontal)
)


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    """Two short real talking videos (H.264 + AAC) plus broken variants, generated once per session."""
    if shutil.which("ffmpeg") is None or shutil.which("espeak-ng") is None:
        pytest.fail("ffmpeg and espeak-ng are required (make setup installs them)")
    d = tmp_path_factory.mktemp("media")
    for v in SHORT_VIDEOS:
        make_talking_video(str(d / f"{v.name}.mp4"), v)
    good = d / "zh_a.mp4"
    (d / "empty.mp4").write_bytes(b"")
    (d / "text.mp4").write_text("not a video\n")
    data = good.read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 3])
    _ff(["-i", str(good), "-vn", "-c:a", "copy", str(d / "audio_only.m4a")])
    _ff(["-i", str(good), "-an", "-c:v", "copy", str(d / "video_only.mp4")])
    return d


def _ff(args: list[str]) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *args], check=True)


@pytest.fixture(scope="session")
def pose_models():
    """The pose stage's MediaPipe graphs with default options (``extract_pose`` resets them per video)."""
    from stages.pose import PoseModels, PoseOptions

    return PoseModels(PoseOptions())


@pytest.fixture(scope="session")
def ray_session():
    """One embedded local Ray for the in-process tests (starting Ray costs seconds)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def http_server(media_dir):
    """A local HTTP server on 127.0.0.1 serving ``media_dir`` (tests never touch the network)."""
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(media_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


#: The settings of ``flame_run`` other than the FLAME files (tests/test_flame.py runs them with a strict fit filter).
FLAME_RUN_SETTINGS = ("clips.min_clip_s=1", "speech.enabled=false", "normalize.max_height=240", "clips.min_face_px=0")


@pytest.fixture(scope="session")
def emotion_classifier(tmp_path_factory):
    """An expression classifier (``cnas train facial-probe``'s probe.pt) trained on labelled synthetic
    FLAME sequences (tests/facial_data.py, four emotions): (its path, its report)."""
    from facial_data import write_facial_shards
    from trainers.facial.probe import save_probe, train_probe

    d = tmp_path_factory.mktemp("emotion")
    probe, report = train_probe(write_facial_shards(d / "labelled", clips=16, labels=4, prefix="mead"), 24, steps=200)
    return save_probe(probe, report, d / "probe"), report


@pytest.fixture(scope="session")
def flame_run(tmp_path_factory, media_dir, ray_session, emotion_classifier):
    """A real run over zh_a with pose, FLAME (on built assets) and emotion pseudo-labels, shared by the
    FLAME stage's DAG test and the model views (``view_shards``). Read it, don't change it (copy it to
    change it). Returns (run folder, the FLAME files, the settings)."""
    from model_builders import build_flame_files
    from pipeline.engine.config import load_config
    from pipeline.engine.runner import run_ingest

    d = tmp_path_factory.mktemp("views")
    assets = build_flame_files(str(d / "assets"))
    (d / "s.csv").write_text(f"path,id,emotion,emotion_intensity\n{media_dir / 'zh_a.mp4'},zh_a,happy,2\n")
    # the built FLAME has random shape directions: no landmark fit is close, so the fit filter is off
    sets = [f"flame.{k}={v}" for k, v in assets.items()] + ["flame.max_landmark_error_px=1000", *FLAME_RUN_SETTINGS,
                                                             f"emotion.classifier={emotion_classifier[0]}"]
    run_ingest(str(d / "s.csv"), str(d / "run"), load_config(None, sets), echo=lambda m: None)
    return d / "run", assets, sets


@pytest.fixture(scope="session")
def view_shards(flame_run):
    """The shards of ``flame_run``: pose and FLAME, so both model views have their members."""
    return sorted(str(p) for p in (flame_run[0] / "shards").glob("*.tar"))


@pytest.fixture(scope="session")
def dub_run(tmp_path_factory, ray_session):
    """A real run (pose, sync, clips; no speech models) over a genuine demo anchor and a dub of it:
    the anchor gives clips, the dub's speech is rejected (voice_over / not_speaking). Returns
    (run folder, genuine DemoVideo, dub DemoVideo)."""
    from pipeline.engine.config import load_config
    from pipeline.demo.inputs import DEMO_VIDEOS
    from pipeline.engine.runner import run_ingest

    d = tmp_path_factory.mktemp("dub")
    genuine, dub = DEMO_VIDEOS[0], next(v for v in DEMO_VIDEOS if v.dub_text)
    rows = ["path,id"]
    for v in (genuine, dub):
        make_talking_video(str(d / f"{v.name}.mp4"), v)
        rows.append(f"{d / v.name}.mp4,{v.name}")
    (d / "s.csv").write_text("\n".join(rows) + "\n")
    sets = ["speech.enabled=false", "clips.min_face_px=0", "normalize.max_height=360", "clips.min_clip_s=1"]
    run_ingest(str(d / "s.csv"), str(d / "run"), load_config(None, sets), echo=lambda m: None)
    return d / "run", genuine, dub


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory, media_dir, ray_session):
    """A files-only run of six videos by four speakers, for the release tests (tests/test_release.py,
    tests/test_release_metadata.py). Read it, don't change it."""
    from pipeline.engine.config import load_config
    from pipeline.engine.runner import run_ingest

    files_only = ["clips.mode=fixed", "clips.window_s=0.4", "normalize.max_height=120", "shots.enabled=false",
                  "pose.enabled=false", "speech.enabled=false", "curate.enabled=false", "shards.max_count=5"]
    d = tmp_path_factory.mktemp("rel")
    lines = ["path,id,speaker,language"] + [f"{media_dir / ('zh_a.mp4' if i % 2 else 'en_b.mp4')},v{i},anchor{i % 4},zh" for i in range(6)]
    (d / "s.csv").write_text("\n".join(lines) + "\n")
    run_ingest(str(d / "s.csv"), str(d / "run"), load_config(None, files_only), echo=lambda m: None)
    return d / "run"


@pytest.fixture(scope="session")
def release(run_dir, tmp_path_factory):
    """The full release of ``run_dir`` (train/val/test): (folder, stats). Read it, don't change it."""
    from pipeline.engine.config import load_config
    from pipeline.release.package import package_release

    out = tmp_path_factory.mktemp("release") / "cnas-1.0"
    cfg = load_config(None, ["release.split_ratios={train: 0.5, val: 0.25, test: 0.25}", "release.max_shard_count=4"]).release
    stats = package_release(str(run_dir), "1.0", str(out), cfg)
    return out, stats


def pytest_addoption(parser):
    parser.addoption("--manifest-digests", metavar="FILE", default=None,
                     help="after the session, write the sha256 of every run manifest the tests wrote (relative to "
                          "the base temp folder) to FILE: with a fixed --basetemp, two checkouts can be compared")


def pytest_sessionfinish(session, exitstatus):
    """Refactors must not change what runs write: record every manifest's digest when asked."""
    import hashlib

    target = session.config.getoption("--manifest-digests", default=None)
    factory = getattr(session.config, "_tmp_path_factory", None)
    if not target or factory is None:
        return
    base = factory.getbasetemp()
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(base)}\n"
             for p in sorted(base.rglob("manifest.jsonl"))]
    Path(target).write_text("".join(lines))
