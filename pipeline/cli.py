"""The data commands of the ``cnas`` command line (the product CLI that registers them is ``cnas/cli.py``).

Exit status of ``cnas ingest``: 0 all videos ok; 3 the run finished but some videos failed
(see failures.jsonl); 1 the run could not run (bad config, unreadable sources file, …); 2 usage.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (defaults: docs/cli.md)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value, e.g. --set clips.window_s=4 (repeatable)")
    p.add_argument("--address", help="Ray cluster address ('auto', ray://host:10001); default: embedded local Ray")
    p.add_argument("--work-dir", help="work dir: local path or fsspec URI (default: OUT/work)")
    p.add_argument("--num-cpus", type=int, help="CPUs for the embedded local Ray (default: all)")


def _load(args, defaults: tuple[str, ...] = ()):
    from pipeline.engine.config import load_config

    overrides = [*defaults, *args.overrides]
    if args.address:
        overrides.append(f"ray.address={args.address}")
    if args.work_dir:
        overrides.append(f"work_dir={args.work_dir}")
    if args.num_cpus:
        overrides.append(f"ray.num_cpus={args.num_cpus}")
    return load_config(args.config, overrides)


def cmd_ingest(args) -> int:
    from pipeline.engine.console import route_to_logs
    from pipeline.engine.run_folder import RunFolder
    from pipeline.engine.lock import output_lock
    from pipeline.engine.runner import run_ingest
    from pipeline.engine.workdir import WorkDir

    with contextlib.ExitStack() as lock:
        if WorkDir(args.out).is_local:  # before the logs: a second run must not write into the first one's folder
            lock.enter_context(output_lock(args.out, "cnas ingest"))
        route_to_logs(os.path.join(args.out, RunFolder.LOGS))
        result = run_ingest(args.sources, args.out, _load(args))
    return EXIT_PARTIAL if result.stats.videos_failed else EXIT_OK


#: The demo's generated 480-px anchors have smaller faces than the default absolute floor allows.
DEMO_SETTINGS = ("clips.min_face_px=64",)


def cmd_demo(args) -> int:
    from pipeline.engine.console import route_to_logs, say
    from pipeline.engine.run_folder import RunFolder
    from pipeline.demo.inputs import write_demo_inputs
    from pipeline.engine.runner import run_ingest

    route_to_logs(os.path.join(args.out, "run", RunFolder.LOGS))  # before the inputs: they run MediaPipe (TFLite's log lines)
    inputs = os.path.join(args.out, "inputs")
    say(f"generating demo inputs in {inputs} ...")
    sources = write_demo_inputs(inputs)
    say(f"demo settings (yours win): {' '.join(DEMO_SETTINGS)} -- the generated anchors' faces are 70-110 px tall; "
        "broadcast faces at 1080p are well above the default clips.min_face_px")
    result = run_ingest(sources, os.path.join(args.out, "run"), _load(args, DEMO_SETTINGS))
    expected = {"broken_upload"}
    failed = {f.video_id for f in result.failures}
    print(f"\nDemo shards are in: {result.shards_dir}")
    print(f"Look at the clips and the rejects: .venv/bin/cnas inspect {os.path.join(args.out, 'run')}")
    if failed == expected:
        print("The one deliberately broken input (broken_upload) was rejected as expected; see failures.jsonl.")
        return EXIT_OK
    say(f"unexpected failures: {sorted(failed - expected)}; missing expected failure: {sorted(expected - failed)}")
    return EXIT_PARTIAL


def cmd_status(args) -> int:
    from pipeline.inspect.status import run_status

    for line in run_status(args.run_dir):
        print(line)
    return EXIT_OK


def cmd_release(args) -> int:
    from pipeline.release.metadata import package_metadata_release
    from pipeline.release.package import package_release

    if args.with_arrays and not args.metadata_only:
        print("--with-arrays goes with --metadata-only (a full release has the arrays in its shards)", file=sys.stderr)
        return EXIT_USAGE
    if args.metadata_only:
        stats = package_metadata_release(args.run_dir, args.version, args.out, _load(args).release, with_arrays=args.with_arrays)
    else:
        stats = package_release(args.run_dir, args.version, args.out, _load(args).release)
    splits = ", ".join(f"{n}: {v['clips']} clips / {len(v['speakers'])} speakers" for n, v in stats["splits"].items())
    print(f"release {stats['name']} {args.version} in {args.out}: {stats['clips']} clips, {stats['hours']:.3f} h ({splits})")
    return EXIT_OK


def cmd_rebuild(args) -> int:
    from pipeline.release.rebuild import SECTIONS, consumer_fields, rebuild_release

    # a release decides only what changes the output (normalise/cut/format options, from its rebuild.json); the
    # runtime and safety settings (cookies, timeouts, retries, max_filesize_mb, allow_file_urls) are yours
    allowed = {f"{sec}.{f}" for sec in SECTIONS for f in consumer_fields(sec)}
    bad = [o.split("=", 1)[0] for o in args.overrides if o.split("=", 1)[0] not in allowed]
    if bad:
        print(f"cnas rebuild takes only runtime and safety settings ({', '.join(sorted(allowed))}); "
              f"the rest comes from the release's rebuild.json: {bad}", file=sys.stderr)
        return EXIT_USAGE
    summary = rebuild_release(args.release, args.out, accept_changed=args.accept_changed, source_dir=args.source_dir,
                              consumer=_load(args), max_member_bytes=int(args.max_member_mb * 2**20))
    return EXIT_OK if summary["rebuilt"] == summary["clips"] else EXIT_PARTIAL


def cmd_inspect(args) -> int:
    from pipeline.inspect.report import build_report, clip_sheet, is_release, is_run

    if args.clip:
        src = os.path.abspath(args.dir)
        if not (is_run(Path(src)) or is_release(Path(src))):
            print(f"{args.dir}: neither an ingest run nor a release", file=sys.stderr)
            return EXIT_ERROR
        out = args.out or (os.path.join(src, "inspect", "sheets") if is_run(Path(src)) else src.rstrip("/") + "-inspect")
        for key in args.clip:
            try:
                print(clip_sheet(src, key, os.path.join(out, f"{key}.png"), args.frames))
            except KeyError as e:
                print(e.args[0], file=sys.stderr)
                return EXIT_ERROR
        return EXIT_OK
    try:
        index = build_report(args.dir, args.out, args.max_clips, args.per_reason, args.frames, args.run)
    except ValueError as e:
        print(str(e), file=sys.stderr)
        return EXIT_ERROR
    print(f"report: {index}")
    return EXIT_OK


def cmd_validate(args) -> int:
    from pipeline.release.validate import validate_release

    rep = validate_release(args.dir, check_media=not args.quick, max_member_bytes=int(args.max_member_mb * 2**20),
                           probe_timeout_s=args.probe_timeout_s)
    for e in rep.errors:
        print(f"ERROR {e}")
    print(f"{'OK' if rep.ok else 'INVALID'}: {rep.shards} shards, {rep.samples} samples checked, {len(rep.errors)} problems")
    return EXIT_OK if rep.ok else EXIT_ERROR


def cmd_schema_export(args) -> int:
    from schemas import export_json_schemas

    for path in export_json_schemas(args.dir):
        print(path)
    return EXIT_OK


def cmd_assets_check(args) -> int:
    """What model assets each stage's options name, which are present, and where to obtain the rest
    (every stage that declares ``assets``)."""
    from pipeline.engine.dag import DAG

    cfg = _load(args)
    missing = []
    for name, spec in DAG.specs.items():
        if spec.assets is None:
            continue
        print(f"{name}:")
        for asset, status in spec.assets(DAG.options(cfg, name)).items():
            print(f"  {asset}: {status}")
            if status.startswith("missing"):
                missing.append(name)
    if missing:
        print(f"Set the paths with --set <stage>.<option>=... (or in --config); see docs/{missing[0]}.md and docs/cli.md.")
    return EXIT_ERROR if missing else EXIT_OK


def cmd_sources(args) -> int:
    from pipeline.engine.sources import read_sources

    for item in read_sources(args.sources):
        print(item.to_json())
    return EXIT_OK


def cmd_adapt_mead(args) -> int:
    from pipeline.corpora.mead import write_mead_sources

    views = tuple(v for v in args.view.split(",") if v) if args.view != "all" else ()
    written, skipped = write_mead_sources(args.root, args.out, views, args.language)
    print(f"wrote {args.out}: {written} MEAD clips" + (f"; {skipped} videos skipped (not MEAD's path layout)" if skipped else ""))
    return EXIT_OK


def add_commands(sub) -> None:
    """Register the data commands (ingest, demo, status, release, rebuild, inspect, validate, schema, assets, sources, adapt)."""
    p = sub.add_parser("ingest", help="run the ingestion DAG: sources -> shards, manifest, failures, stats")
    p.add_argument("--sources", required=True, help="txt / csv / jsonl of URLs or local paths")
    p.add_argument("--out", required=True, help="output folder (local path or fsspec URI)")
    _add_config_args(p)
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("demo", help="generate demo talking-person videos and ingest them")
    p.add_argument("--out", default="demo_out", help="demo folder (default: demo_out)")
    _add_config_args(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("status", help="where an ingest run stands (going on in another shell, or finished)")
    p.add_argument("run_dir", help="output folder of `cnas ingest` (for `cnas demo`: DEMO/run)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("release", help="package an ingest run as a CNAS release (splits, shards, checksums, card)")
    p.add_argument("run_dir", help="output folder of `cnas ingest`")
    p.add_argument("--version", required=True)
    p.add_argument("--out", required=True, help="release folder (must be new or empty)")
    p.add_argument("--metadata-only", action="store_true",
                   help="no media: per clip the source, times, crop, checksums and record; users rebuild with `cnas rebuild`")
    p.add_argument("--with-arrays", action="store_true", help="with --metadata-only: ship the pose.npz / flame.npz members")
    _add_config_args(p)
    p.set_defaults(func=cmd_release)

    p = sub.add_parser("rebuild", help="rebuild a metadata-only release: fetch, re-cut, verify every member; resumable")
    p.add_argument("release", help="folder of a `cnas release --metadata-only` (untrusted: checked before anything is written)")
    p.add_argument("--out", required=True, help="output folder: shards in the release layout, rebuild_report.jsonl; re-running resumes")
    p.add_argument("--accept-changed", action="store_true", help="cut clips whose source checksum changed (still reported as differs)")
    p.add_argument("--source-dir", help="the folder holding the local sources (kind=file): looked up by file name (relative "
                                        "paths below it), never outside it; without it local sources are unavailable")
    p.add_argument("--config", help="YAML config file: only its runtime and safety settings are used (download: max_filesize_mb, "
                                    "allow_file_urls and the runtime ones such as cookies, timeouts, retries; normalize/clips: timeout_s); "
                                    "the release's rebuild.json decides what changes the output")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="runtime/safety setting, e.g. --set download.cookies_file=cookies.txt, download.max_filesize_mb=2048 (repeatable)")
    p.add_argument("--max-member-mb", type=float, default=512.0, help="largest tar member (arrays) or metadata file read from the release (default 512)")
    p.set_defaults(func=cmd_rebuild, address=None, work_dir=None, num_cpus=None)

    p = sub.add_parser("inspect", help="contact sheets of clips and an HTML report of a run or release")
    p.add_argument("dir", help="an ingest run folder or a release folder")
    p.add_argument("--out", help="report folder (default: RUN/inspect, or RELEASE-inspect beside a release)")
    p.add_argument("--clip", action="append", metavar="KEY", help="only the contact sheet of this clip (repeatable)")
    p.add_argument("--max-clips", type=int, default=12, help="clip sheets in the report (per split of a release; default 12)")
    p.add_argument("--per-reason", type=int, default=2, help="example sheets per reject reason (default 2)")
    p.add_argument("--frames", type=int, default=8, help="frames per sheet (default 8)")
    p.add_argument("--run", help="for a release: the ingest run it came from (timings, failures, reject examples)")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("validate", help="check a release: checksums, shards, members, schemas, lengths")
    p.add_argument("dir")
    p.add_argument("--quick", action="store_true", help="skip decoding mp4 frame counts")
    p.add_argument("--max-member-mb", type=float, default=512.0, help="largest tar member or metadata file read (default 512)")
    p.add_argument("--probe-timeout-s", type=float, default=60.0, help="ffprobe time limit per mp4 member (default 60)")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("schema", help="record schemas")
    schema_sub = p.add_subparsers(dest="schema_command", required=True, metavar="ACTION")
    e = schema_sub.add_parser("export", help="write the JSON Schema of every record type into DIR")
    e.add_argument("dir")
    e.set_defaults(func=cmd_schema_export)

    p = sub.add_parser("assets", help="model assets (FLAME/DECA weights, speech models)")
    assets_sub = p.add_subparsers(dest="assets_command", required=True, metavar="ACTION")
    a = assets_sub.add_parser("check", help="say which model files are present and where to obtain the rest")
    _add_config_args(a)
    a.set_defaults(func=cmd_assets_check)

    p = sub.add_parser("sources", help="show the source items (ids, kinds, metadata) a sources file resolves to")
    p.add_argument("sources")
    p.set_defaults(func=cmd_sources)

    p = sub.add_parser("adapt", help="write a sources csv for a labelled corpus on disk")
    adapt_sub = p.add_subparsers(dest="corpus", required=True, metavar="CORPUS")
    a = adapt_sub.add_parser("mead", help="MEAD: emotion and intensity from <speaker>/video/<view>/<emotion>/level_<n>/")
    a.add_argument("root", help="MEAD root folder (the one holding M003/, W009/ ...)")
    a.add_argument("--out", required=True, help="sources csv to write")
    a.add_argument("--view", default="front", help="camera views, comma-separated, or 'all' (default: front)")
    a.add_argument("--language", default="en")
    a.set_defaults(func=cmd_adapt_mead)
