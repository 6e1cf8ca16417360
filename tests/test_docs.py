"""The docs that restate code stay in step with it."""

import re
import subprocess
import sys
from pathlib import Path

from pipeline.engine.config import Config, dump_config
from pipeline.engine.dag import DAG

ROOT = Path(__file__).resolve().parents[1]


def test_cli_reference_lists_the_current_config_defaults():
    assert dump_config(Config()).strip() in (ROOT / "docs" / "cli.md").read_text()


def test_generated_doc_blocks_are_current():
    """`make docs` has been run since the code they restate changed (scripts/render_docs.py --check)."""
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "render_docs.py"), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_dag_diagrams_show_the_declared_stage_order():
    """README's and architecture.md's pictures of the DAG name the stages in the registry's order."""
    declared = list(DAG.specs)
    readme = next(l for l in (ROOT / "README.md").read_text().splitlines() if l.startswith("sources ─▶"))
    assert re.findall(r"─▶ (\w+)", readme)[: len(declared)] == declared
    arch = (ROOT / "docs" / "architecture.md").read_text()
    plan = re.findall(r"(?:map|map_batches)\((\w+)", arch[arch.index("from_items(sources)"):])
    assert plan[: len(declared)] == declared


def test_readme_starts_with_the_two_commands():
    lines = [line for line in (ROOT / "README.md").read_text().splitlines() if line.strip()]
    assert lines[1:5] == ["```", "make demo", "make test", "```"]
