"""The docs that restate code stay in step with it."""

from pathlib import Path

from pipeline.engine.config import Config, dump_config

ROOT = Path(__file__).resolve().parents[1]


def test_cli_reference_lists_the_current_config_defaults():
    assert dump_config(Config()).strip() in (ROOT / "docs" / "cli.md").read_text()


def test_readme_starts_with_the_two_commands():
    lines = [line for line in (ROOT / "README.md").read_text().splitlines() if line.strip()]
    assert lines[1:5] == ["```", "make demo", "make test", "```"]
