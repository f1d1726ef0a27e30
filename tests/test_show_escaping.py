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


def test_json_output_escapes_what_a_terminal_would_act_on(lib, emb_factory):
    """``--json`` keeps non-ASCII letters readable but writes C1 controls, bidi
    overrides, zero-width and tag characters and line separators as ``\\u`` escapes;
    the parsed value is unchanged."""
    import json

    hostile = "caf\u00e9 \u202eevil\u202c \x9b31m \u200b \U000e0041 \u2028 \u65e5"
    lib.add_embedding(emb_factory(seed=6), name="json-hostile", description=hostile)
    lib.close()
    result = CliRunner().invoke(cli, ["show", "json-hostile", "--json"], color=False)
    assert result.exit_code == 0, result.output
    out = result.output
    for raw in ("\u202e", "\u202c", "\x9b", "\u200b", "\U000e0041", "\u2028"):
        assert raw not in out, repr(raw)
    assert "\\u202e" in out and "\\u009b" in out and "\\udb40\\udc41" in out
    assert "café" in out and "\u65e5" in out  # letters stay letters
    assert json.loads(out)["description"] == hostile
