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
            e.name,
            e.kind,
            e.family,
            str(e.num_vectors),
            e.source,
            ", ".join(e.tags),
            e.a1111_hash,
        )
    return table


def detail_panel(e: EmbeddingInfo, store_path_of=None):  # noqa: ANN001, ANN201
    from rich.console import Group
    from rich.table import Table

    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold")
    t.add_column()

    def row(k: str, v: object) -> None:
        if v not in (None, "", [], {}):
            t.add_row(k, str(v))

    row("name", e.name)
    row("token", e.token)
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
    row("flags", ", ".join(e.flags))
    if e.parents:
        row(
            "parents",
            ", ".join(
                f"{p.get('name', p.get('tensor_sha256', '?')[:12])}:{p.get('weight')}"
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
            pt.add_row(
                p.filename, p.role, str(store_path_of(p.sha256)) if store_path_of else p.sha256
            )
        parts.append(pt)
    for run in e.training_runs:
        rt = Table.grid(padding=(0, 2))
        rt.add_column(style="bold")
        rt.add_column()
        rt.add_row("training run", f"#{run.id} ({run.status}, {run.created_at})")
        rt.add_row("steps", str(run.steps))
        if run.final_loss is not None:
            rt.add_row("final loss", f"{run.final_loss:.5f}")
        if run.wall_time_s is not None:
            rt.add_row("wall time", f"{run.wall_time_s:.1f} s on {run.device}")
        rt.add_row("base", f"{run.base_model} [{run.base_model_fingerprint}]")
        rt.add_row("initializer", str(run.initializer))
        rt.add_row("images", f"{run.training_image_count} ({run.training_images_hash})")
        cfg = ", ".join(f"{k}={v}" for k, v in sorted(run.config.items()) if k not in ("images",))
        rt.add_row("config", cfg)
        parts.append(rt)
    for s in e.syncs:
        parts.append(
            f"[bold]hub[/bold] {s.direction} {s.repo_id}@{s.revision} "
            f"commit {(s.commit_sha or '')[:12]} at {s.synced_at}"
        )
    return Group(*parts)
