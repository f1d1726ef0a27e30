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
from conceptlib.errors import ConceptlibError, NameCollision

#: command name -> (module:attribute, one-line help shown by ``--help``)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("conceptlib.cli.demo:demo_cmd", "Run the built-in demo on generated samples."),
    "import": ("conceptlib.cli.importing:import_cmd", "Import embedding files and folders."),
    "train": (
        "conceptlib.cli.train:train_cmd",
        "Train a textual-inversion embedding on images and register it.",
    ),
    "train-plan": (
        "conceptlib.cli.train_plan:train_plan_cmd",
        "Train the concepts of a plan file together (torchrun for several GPUs).",
    ),
    "list": ("conceptlib.cli.browse:list_cmd", "List every embedding in the catalog."),
    "search": ("conceptlib.cli.browse:search_cmd", "Find embeddings by text, tag, family..."),
    "serve": ("conceptlib.cli.serve:serve_cmd", "Browse and edit the catalog in a local web page."),
    "show": ("conceptlib.cli.browse:show_cmd", "Show everything known about one embedding."),
    "tag": ("conceptlib.cli.manage:tag_cmd", "Add or remove tags."),
    "edit": (
        "conceptlib.cli.manage:edit_cmd",
        "Change kind, description, trigger token or words, base model.",
    ),
    "rename": ("conceptlib.cli.manage:rename_cmd", "Rename an embedding (and its token)."),
    "rm": ("conceptlib.cli.manage:rm_cmd", "Remove an embedding from the catalog."),
    "export": ("conceptlib.cli.manage:export_cmd", "Write an embedding for a UI or diffusers."),
    "ui-sync": (
        "conceptlib.cli.uisync:ui_sync_cmd",
        "Keep a UI's embeddings folder in sync with the catalog.",
    ),
    "verify": ("conceptlib.cli.manage:verify_cmd", "Check every blob and the database."),
    "gc": ("conceptlib.cli.manage:gc_cmd", "Remove orphan blobs from the store."),
    "compose": (
        "conceptlib.cli.compose:compose_cmd",
        "Generate images from a prompt naming embeddings; --dry-run, --format.",
    ),
    "which": ("conceptlib.cli.inspect:which_cmd", "List the embeddings an image was made with."),
    "inspect": ("conceptlib.cli.inspect:which_cmd", "Same as which."),
    "blend": ("conceptlib.cli.compose:blend_cmd", "Blend embeddings of one family into a new one."),
    "push": ("conceptlib.cli.hub:push_cmd", "Push a concept or a library to the Hugging Face Hub."),
    "civitai": (
        "conceptlib.cli.civitai:civitai_group",
        "Look entries up on Civitai by hash (civitai info).",
    ),
    "pull": (
        "conceptlib.cli.hub:pull_cmd",
        "Pull embeddings or a library from the Hugging Face Hub.",
    ),
}


class UserError(click.ClickException):
    """A :class:`ConceptlibError` on its way out: one line, a hint, its own exit code.

    ``command`` is the command that raised it: a name or token collision's hint then
    names the option of that command which sets the name or token.
    """

    def __init__(self, error: ConceptlibError, command: click.Command | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.exit_code = error.exit_code
        self.hint = command_hint(error, command)

    def show(self, file: Any = None) -> None:
        # Messages carry file names, tensor names and server text: never raw controls.
        from conceptlib.cli.render import safe_text

        click.echo(f"error: {safe_text(self.error.message)}", err=True)
        if self.hint:
            click.echo(f"hint: {safe_text(self.hint)}", err=True)


def command_hint(error: ConceptlibError, command: click.Command | None) -> str | None:
    """``error.hint``, completed with the option of ``command`` that acts on it.

    Library code does not know which command called it, so its hints name no option;
    an error may instead carry the ``option`` that fixes it (a :class:`NameCollision`
    carries the ``field``, ``name`` or ``token``: ``--name`` / ``--token``). The hint
    names it only when ``command`` has it (else a collision's hint names the NEW /
    NEW_NAME argument of ``rename`` / ``blend``): a hint never names an option the
    command lacks.
    """
    if command is None or not error.hint:
        return error.hint
    field = error.facts.get("field") if isinstance(error, NameCollision) else None
    option = f"--{field}" if field in ("name", "token") else error.facts.get("option")
    if not isinstance(option, str):
        return error.hint
    if any(option in p.opts for p in command.params if isinstance(p, click.Option)):
        return f"{error.hint} with {option}"
    new = [p for p in command.params if isinstance(p, click.Argument) and p.name in _NEW_ARGS]
    if field == "name" and new:
        return f"{error.hint}: give another {new[0].human_readable_name}"
    return error.hint


#: Arguments that name the entry a command creates or renames (``rename``, ``blend``).
_NEW_ARGS = ("new", "new_name")


def _set_debug(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(dict)["debug"] = True


def _printable(text: str, limit: int = 300) -> str:
    """One line with control characters shown as escapes (an exception's text may
    quote a file's bytes)."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    out = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in line)
    return out if len(out) <= limit else out[: limit - 1] + "…"


class LazyGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConceptlibError as exc:
            if (ctx.obj or {}).get("debug"):
                import traceback

                traceback.print_exc()
            name = ctx.invoked_subcommand
            raise UserError(exc, self.get_command(ctx, name) if name else None) from exc
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:  # a bug: one line (the traceback with --debug), exit 1
            if (ctx.obj or {}).get("debug"):
                raise
            click.echo(f"error: unexpected {type(exc).__name__}: {_printable(str(exc))}", err=True)
            click.echo(
                "hint: this is a bug in conceptlib; run the command again with --debug for "
                "the traceback, and report it",
                err=True,
            )
            ctx.exit(1)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target[0].split(":")
        command: click.Command = getattr(importlib.import_module(module_name), attr)
        if not any(p.name == "debug" for p in command.params):
            # --debug after the command too (`conceptlib show x --debug`), for every command.
            command.params.append(
                click.Option(
                    ["--debug"],
                    is_flag=True,
                    expose_value=False,
                    callback=_set_debug,
                    help="Show tracebacks for errors (same as conceptlib --debug COMMAND).",
                )
            )
        return command

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
@click.option(
    "--debug",
    is_flag=True,
    help="Show tracebacks for errors (also accepted after the command: show x --debug).",
)
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
