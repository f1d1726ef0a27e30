from pathlib import Path

from conceptlib.cli.docs import render_cli_reference

ROOT = Path(__file__).parents[1]


def test_cli_reference_is_up_to_date():
    committed = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert committed == render_cli_reference(), (
        "docs/cli.md is stale: run `python -m conceptlib.cli.docs > docs/cli.md`"
    )


def test_readme_has_the_two_quick_start_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "pip install torch==2.13.0 && pip install . && conceptlib demo" in readme
    test_cmd = 'pip install torch==2.13.0 && pip install -e ".[dev]" && python -m pytest -q -n auto'
    assert test_cmd in readme
    assert test_cmd in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
