"""Rich rendering of catalog records for people (``--json`` bypasses all of this)."""

from __future__ import annotations

from collections.abc import Sequence

from conceptlib.schemas.records import EmbeddingInfo


def embeddings_table(infos: Sequence[EmbeddingInfo], title: str | None = None):  # noqa: ANN201
    from rich.table import Table

    table = Table(title=title, show_lines=False, header_style="bold")
    table.add_column("name", style="cyan", no_wrap=True)
    table.add_column("kind")
    table.add_column("family")
    table.add_column("vec", justify="right")
    table.add_column("source")
    table.add_column("tags")
    table.add_column("hash", style="dim", no_wrap=True)
    for e in infos:
        table.add_row(
            printable(e.name),
            e.kind,
            e.family,
            str(e.num_vectors),
            e.source,
            printable(", ".join(e.tags)),
            e.a1111_hash,
        )
    return table


def resume_changes_text(changes: object) -> str:
    """A training run's ``resume_changes`` (``[{"step", "setting", "old", "new"}]``) as
    ``"at step 40: lr 0.005 -> 0.0025; ..."``; empty when there are none."""
    if not isinstance(changes, list):
        return ""
    return "; ".join(
        f"at step {c.get('step')}: {c.get('setting')} {c.get('old')} -> {c.get('new')}"
        for c in changes
        if isinstance(c, dict)
    )


def quality_text(scored: list) -> str:
    """``step N: CLIP-I / CLIP-T`` per scored step of a run (values as stored)."""
    out = []
    for q in scored:
        try:
            out.append(f"{int(q['step'])}: {float(q['clip_i']):.3f} / {float(q['clip_t']):.3f}")
        except (KeyError, TypeError, ValueError):
            continue
    return ", ".join(out)


def safe_text(value: object) -> str:
    """``value`` as text safe to send to a terminal: control, invisible, bidi and line
    separator characters shown as escapes (``\\x1b``, ``\\u202e``, ``\\n``), never sent.

    For plain output (``click.echo``, error lines). Inside rich markup use
    :func:`printable`, which also escapes markup brackets."""
    import unicodedata

    text = str(value)
    if text.isprintable():
        return text
    return "".join(
        ascii(ch)[1:-1] if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") else ch
        for ch in text
    )


def printable(value: object) -> str:
    """``value`` as text safe to print in rich markup: :func:`safe_text`, then markup
    brackets escaped. For text that came from files, sidecars or servers."""
    from rich.markup import escape

    return escape(safe_text(value))


def detail_panel(e: EmbeddingInfo, store_path_of=None):  # noqa: ANN001, ANN201
    from rich.console import Group
    from rich.table import Table

    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold")
    t.add_column()

    def row(k: str, v: object) -> None:
        if v not in (None, "", [], {}):
            t.add_row(k, printable(v))

    row("name", e.name)
    if e.extra.get("renamed_from"):
        row("renamed from", f"{e.extra['renamed_from']} ({e.extra.get('rename_reason', '')})")
    row("name in file", e.extra.get("name_in_file"))
    row("token", e.token)
    row("token in file", e.extra.get("token_in_file"))
    row("kind", e.kind)
    row("family", e.family)
    row(
        "compatible",
        ", ".join(f"{k}: {v}" for k, v in e.compatibility.items() if v != "none"),
    )
    row("vectors", f"{e.num_vectors} x {'+'.join(str(d) for d in e.dims)}")
    row("tags", ", ".join(e.tags))
    row("description", e.description)
    row("license", e.license)
    row("source", f"{e.source}" + (f" ({e.source_ref})" if e.source_ref else ""))
    row("base model", e.base_model)
    row("clip skip", e.extra.get("clip_skip"))
    row("base fingerprint", e.base_model_fingerprint)
    row("initializer", e.initializer)
    if e.training_images_hash:
        row(
            "training images",
            f"{e.training_image_count} images, sha256 {e.training_images_hash}",
        )
    row("tensor sha256", e.tensor_sha256)
    row("file sha256", e.file_sha256)
    row("A1111 hash", e.a1111_hash)
    row("Civitai AutoV2", e.autov2)
    civ = e.extra.get("civitai")  # from `civitai info` or a Civitai pull (server text)
    if isinstance(civ, dict):
        row(
            "Civitai",
            f"{civ.get('model_name') or '?'} / {civ.get('version_name') or '?'} "
            f"({civ.get('air') or '?'})",
        )
        lic = civ.get("license")
        if isinstance(lic, dict):
            row("Civitai license", ", ".join(f"{k}={v}" for k, v in sorted(lic.items())))
    row("flags", ", ".join(e.flags))
    if e.parents:
        row(
            "parents",
            ", ".join(
                f"{p.get('name', p.get('tensor_sha256', '?')[:12])}:{p.get('weight')}"
                + (f" ({p['relation']})" if p.get("relation") else "")
                for p in e.parents
            ),
        )
    row("version", e.version if e.version != 1 else None)
    row("created", e.created_at)
    row("updated", e.updated_at)
    parts: list = [t]
    if e.previews:
        pt = Table(title="previews", title_justify="left", header_style="bold")
        pt.add_column("file")
        pt.add_column("role")
        pt.add_column("path", style="dim")
        for p in e.previews:
            where = store_path_of(p.sha256) if store_path_of else p.sha256
            pt.add_row(printable(p.filename), printable(p.role), printable(where))
        parts.append(pt)
    # Training runs and sync records may come from a pulled concept.json: every value
    # goes through printable() like the rows above.
    for run in e.training_runs:
        rt = Table.grid(padding=(0, 2))
        rt.add_column(style="bold")
        rt.add_column()

        def run_row(k: str, v: object, table: Table = rt) -> None:
            table.add_row(k, printable(v))

        run_row("training run", f"#{run.id} ({run.status}, {run.created_at})")
        run_row("steps", run.steps)
        if run.final_loss is not None:
            run_row("final loss", f"{run.final_loss:.5f}")
        if run.wall_time_s is not None:
            run_row("wall time", f"{run.wall_time_s:.1f} s on {run.device}")
        run_row("base", f"{run.base_model} [{run.base_model_fingerprint}]")
        run_row("initializer", run.initializer)
        run_row("images", f"{run.training_image_count} ({run.training_images_hash})")
        if run.clip_i is not None or run.clip_t is not None:
            shown = [f"{v:.4f}" if isinstance(v, float) else "-" for v in (run.clip_i, run.clip_t)]
            run_row("CLIP-I / CLIP-T", " / ".join(shown))
        scored = run.metrics.get("quality") if isinstance(run.metrics, dict) else None
        if isinstance(scored, list) and scored:
            run_row("per step", quality_text(scored))
        changes = resume_changes_text(run.config.get("resume_changes"))
        if changes:
            run_row("changed on resume", changes)
        cfg = ", ".join(
            f"{k}={v}"
            for k, v in sorted(run.config.items())
            if k not in ("images", "resume_changes")
        )
        run_row("config", cfg)
        parts.append(rt)
    for sync in e.syncs:
        parts.append(
            "[bold]hub[/bold] "
            + printable(
                f"{sync.direction} {sync.repo_id}@{sync.revision} "
                f"commit {(sync.commit_sha or '')[:12]} at {sync.synced_at}"
            )
        )
    return Group(*parts)
