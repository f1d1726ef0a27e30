"""Render the CLI reference (``docs/cli.md``) from the commands' own help text.

``python -m conceptlib.cli.docs > docs/cli.md`` regenerates it; a test fails when the
committed file and the commands disagree, so help text and docs change together.
"""

from __future__ import annotations

import click

from conceptlib.cli.main import COMMANDS, cli


def _help(command: click.Command, path: str) -> str:
    # The same help option names as the real CLI. Click caches the help option per
    # command with the names of the first context that asked: a command invoked on its
    # own before (in a test, say) would render "--help" without "-h".
    if getattr(command, "_help_option", None) is not None:
        command._help_option = None
    ctx = click.Context(
        command,
        info_name=path,
        terminal_width=100,
        max_content_width=100,
        help_option_names=["-h", "--help"],
    )
    return command.get_help(ctx)


def render_cli_reference() -> str:
    parts = [
        "# CLI reference",
        "",
        "Generated from the commands' `--help` by `python -m conceptlib.cli.docs`; do not edit.",
        "",
        "```text",
        _help(cli, "conceptlib"),
        "```",
    ]
    for name in sorted(COMMANDS):
        cmd = cli.get_command(click.Context(cli), name)
        assert cmd is not None
        parts += [
            "",
            f"## conceptlib {name}",
            "",
            "```text",
            _help(cmd, f"conceptlib {name}"),
            "```",
        ]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    click.echo(render_cli_reference(), nl=False)
