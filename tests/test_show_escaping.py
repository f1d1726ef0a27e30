"""``show`` prints what a pulled concept.json carried (training runs, sync records,
preview names) as text: control characters shown as escapes, rich markup not applied."""

from __future__ import annotations

from click.testing import CliRunner

from conceptlib.cli.main import cli
from conceptlib.schemas.records import Preview, TrainingRunRecord


def test_training_run_and_preview_values_are_printed_not_interpreted(lib, emb_factory):
    lib.add_embedding(
        emb_factory(seed=5),
        name="hostile-run",
        previews=[Preview(filename="[red]p.png", data=b"\x89PNG\r\n\x1a\nxx", role="preview")],
        training_run=TrainingRunRecord(
            config={"lr": 0.005, "note": "\x1b]0;owned\x07[bold]loud[/bold]"},
            steps=10,
            device="cpu\x1b[2J",
            base_model="org/base",
            base_model_fingerprint="fp2:[link=http://x]abc",
            initializer="[blink]toy",
        ),
    )
    lib.close()
    result = CliRunner().invoke(cli, ["show", "hostile-run"], color=False)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "\x1b" not in out and "\x07" not in out
    assert "\\x1b" in out  # shown as an escape
    for literal in ("[bold]loud[/bold]", "[link=http://x]abc", "[blink]toy"):
        assert literal in out, literal
