"""The ``conceptlib`` command: a lazy click group and the one error exit path.

Command modules are imported only when their command runs, so ``--help``,
``list``, ``search`` and ``show`` start without torch, diffusers, transformers or
huggingface_hub.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import click

from conceptlib import __version__
from conceptlib.errors import ConceptlibError

#: command name -> (module:attribute, one-line help shown by ``--help``)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("conceptlib.cli.demo:demo_cmd", "Run the built-in demo on generated samples."),
    "import": ("conceptlib.cli.importing:import_cmd", "Import embedding files and folders."),
    "train": (
        "conceptlib.cli.train:train_cmd",
        "Train a textual-inversion embedding on images and register it.",
    ),
    "list": ("conceptlib.cli.browse:list_cmd", "List every embedding in the catalog."),
    "search": ("conceptlib.cli.browse:search_cmd", "Find embeddings by text, tag, family..."),
    "show": ("conceptlib.cli.browse:show_cmd", "Show everything known about one embedding."),
    "tag": ("conceptlib.cli.manage:tag_cmd", "Add or remove tags."),
    "rename": ("conceptlib.cli.manage:rename_cmd", "Rename an embedding."),
    "rm": ("conceptlib.cli.manage:rm_cmd", "Remove an embedding from the catalog."),
    "export": ("conceptlib.cli.manage:export_cmd", "Write an embedding for a UI or diffusers."),
    "verify": ("conceptlib.cli.manage:verify_cmd", "Check every blob and the database."),
    "gc": ("conceptlib.cli.manage:gc_cmd", "Remove orphan blobs from the store."),
    "compose": (
        "conceptlib.cli.compose:compose_cmd",
        "Generate images from a prompt naming embeddings; --dry-run, --format.",
    ),
    "blend": ("conceptlib.cli.compose:blend_cmd", "Blend embeddings of one family into a new one."),
    "push": ("conceptlib.cli.hub:push_cmd", "Push a concept or a library to the Hugging Face Hub."),
    "pull": (
        "conceptlib.cli.hub:pull_cmd",
        "Pull embeddings or a library from the Hugging Face Hub.",
    ),
}


class UserError(click.ClickException):
    """A :class:`ConceptlibError` on its way out: one line, a hint, its own exit code."""

    def __init__(self, error: ConceptlibError) -> None:
        super().__init__(error.message)
        self.error = error
        self.exit_code = error.exit_code

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.error.message}", err=True)
        if self.error.hint:
            click.echo(f"hint: {self.error.hint}", err=True)


class LazyGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConceptlibError as exc:
            if (ctx.obj or {}).get("debug"):
                import traceback

                traceback.print_exc()
            raise UserError(exc) from exc
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target[0].split(":")
        return getattr(importlib.import_module(module_name), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Short help without importing every command module.
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="conceptlib")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """conceptlib: a registry and library manager for textual-inversion embeddings.

    Data lives in CONCEPTLIB_HOME (default: your user data dir): catalog.db and
    the blob store. Every command that prints data takes --json.

    \b
    Examples:
      conceptlib demo
      conceptlib train photos/ --name cat-toy --init toy --base ./sd15
      conceptlib import ~/webui/embeddings --recursive
      conceptlib search watercolor --tag style --family sd1
      conceptlib show easynegative
      conceptlib export cat-toy --format a1111-pt -o ~/webui/embeddings
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug or os.environ.get("CONCEPTLIB_DEBUG") == "1"


def main(argv: list[str] | None = None) -> Any:
    """Entry point of the console script and ``python -m conceptlib``."""
    return cli.main(args=argv, prog_name="conceptlib")
