"""The local web catalog: a Starlette app over :class:`~conceptlib.registry.library.Library`.

Server-rendered Jinja2 pages (autoescaped, every value), one small script for copy
buttons, no SQL here: each handler calls the library like a CLI command does. Reads
are GETs; the only writes are the edits a library is expected to offer (tags, kind,
description, rename), each a POST with the session's CSRF token
(:mod:`conceptlib.web.security`). Entries are addressed by their tensor SHA-256,
which a rename keeps.
"""

from __future__ import annotations

import datetime as _dt
import io
import re
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, urlencode

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from conceptlib.errors import ConceptlibError, NotFound, UsageError
from conceptlib.registry.gallery import SORTS, search_page
from conceptlib.schemas.enums import Family, Kind, Source
from conceptlib.web import runs as runs_mod
from conceptlib.web import thumbs
from conceptlib.web.security import Guard, Sessions, allowed_hosts, same_origin

if TYPE_CHECKING:
    from conceptlib.registry.library import Library
    from conceptlib.schemas.records import EmbeddingInfo

HERE = Path(__file__).resolve().parent
#: Entries per gallery page.
PAGE_SIZE = 48
#: Largest form body read (a description is at most 10,000 characters).
MAX_FORM_BYTES = 256 * 1024
_SHA = re.compile(r"[0-9a-f]{64}")
#: HTTP status of a refused request, by the error's exit code (README's table).
_STATUS = {2: 400, 5: 409, 6: 404, 7: 503}
SORT_LABELS = {"name": "name", "newest": "newest first", "oldest": "oldest first",
               "clip-i": "CLIP-I (likeness), best first",
               "clip-t": "CLIP-T (prompt fidelity), best first"}  # fmt: skip


def _templates():  # noqa: ANN202
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(
        loader=FileSystemLoader(str(HERE / "templates")),
        autoescape=True,  # every page, every value: names, tags, descriptions, paths
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["loss"] = lambda v: "" if v is None else f"{v:.5f}"
    env.filters["score"] = lambda v: "-" if v is None else f"{v:.4f}"
    env.filters["q"] = lambda v: quote(str(v), safe="")
    return env


def _when(value: object) -> str:
    """An ISO time as ``2025-01-31 14:02`` (UTC as stored); anything else as text."""
    if not value:
        return ""
    try:
        t = _dt.datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    return t.strftime("%Y-%m-%d %H:%M")


def create_app(library: Library, *, host: str = "127.0.0.1", port: int = 7861) -> Any:
    """The ASGI app serving ``library`` as it is bound to ``host``:``port`` (the Host
    header every request must carry)."""
    env = _templates()
    sessions = Sessions()
    hosts = allowed_hosts(host, port)

    def page(request: Request, name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        ctx.setdefault("title", "conceptlib")
        html = env.get_template(name).render(
            csrf=sessions.token(request.state.session), home=str(library.settings.home), **ctx
        )
        return HTMLResponse(html, status_code=status, headers={"cache-control": "no-store"})

    def error_page(request: Request, exc: ConceptlibError) -> HTMLResponse:
        status = _STATUS.get(exc.exit_code, 500)
        return page(
            request, "error.html", status, title="error", message=exc.message, hint=exc.hint
        )

    def entry(sha: str) -> EmbeddingInfo:
        info = library.by_tensor_sha256(sha) if _SHA.fullmatch(sha) else None
        if info is None:
            raise NotFound(f"no embedding with tensor SHA-256 {sha[:64]!r}")
        return info

    # ------------------------------------------------------------------ reads

    def gallery(request: Request) -> Response:
        p = request.query_params
        text = p.get("q", "").strip()
        tags = [t.strip() for t in ",".join(p.getlist("tag")).split(",") if t.strip()]
        filters = {
            "family": _choice(p.get("family"), [f.value for f in Family], "family"),
            "kind": _choice(p.get("kind"), [k.value for k in Kind], "kind"),
            "compatible_with": _choice(p.get("compat"), [f.value for f in Family], "compat"),
            "source": _choice(p.get("source"), [s.value for s in Source], "source"),
        }
        sort = _choice(p.get("sort"), list(SORTS), "sort") or "name"
        number = _page_number(p.get("page"))
        result = search_page(
            library, text or None, tags=tags, order=sort, page=number, size=PAGE_SIZE, **filters
        )
        state = {
            "q": text,
            "tag": ", ".join(tags),
            "family": filters["family"] or "",
            "kind": filters["kind"] or "",
            "compat": filters["compatible_with"] or "",
            "source": filters["source"] or "",
            "sort": sort if sort != "name" else "",
        }

        def url(**change: Any) -> str:
            merged = {**state, **change}
            return "/?" + urlencode({k: v for k, v in merged.items() if v})

        running = runs_mod.runs_in_progress(library.settings.runs_dir)
        return page(
            request,
            "gallery.html",
            title="conceptlib: embeddings",
            result=result,
            state=state,
            url=url,
            families=[f.value for f in Family],
            kinds=[k.value for k in Kind],
            sources=[s.value for s in Source],
            sorts=SORT_LABELS,
            running=len(running),
        )

    def concept(request: Request) -> Response:
        from conceptlib.web.snippets import export_formats, snippets

        info = entry(request.path_params["sha"])
        parents = []
        for par in info.parents:
            sha = str(par.get("tensor_sha256") or "")
            known = library.by_tensor_sha256(sha) if _SHA.fullmatch(sha) else None
            parents.append({"facts": par, "sha": sha, "known": known})
        by_role: dict[str, list[tuple[int, Any]]] = {}
        for i, pv in enumerate(info.previews):
            by_role.setdefault(pv.role, []).append((i, pv))
        cover = thumbs.cover(info)
        return page(
            request,
            "concept.html",
            title=f"{info.name}: conceptlib",
            e=info,
            parents=parents,
            by_role=by_role,
            cover=cover,
            snippets=snippets(library, info),
            exports=export_formats(info),
            kinds=[k.value for k in Kind],
            config_rows=[_config_rows(r.config) for r in info.training_runs],
        )

    def preview(request: Request) -> Response:
        info = entry(request.path_params["sha"])
        index = request.path_params["index"]
        if not 0 <= index < len(info.previews):
            raise NotFound(f"{info.name} has no preview number {index}")
        path = library.preview_path(info, info.previews[index].filename)
        return _image_file(path)

    def thumb(request: Request) -> Response:
        info = entry(request.path_params["sha"])
        path = thumbs.thumbnail(library, info)
        headers = {"cache-control": "private, max-age=60"}
        if path is None:
            svg = thumbs.placeholder_svg(info.family, info.kind)
            return Response(svg, media_type="image/svg+xml", headers=headers)
        return FileResponse(path, media_type="image/webp", headers=headers)

    def download(request: Request) -> Response:
        info = entry(request.path_params["sha"])
        fmt = request.path_params["fmt"]
        with tempfile.TemporaryDirectory(prefix="conceptlib-web-export-") as tmp:
            written = library.export(info.name, fmt, tmp)
            files = [Path(p) for p in written]
            if len(files) == 1 and fmt != "invokeai":
                data, filename = files[0].read_bytes(), files[0].name
                media = "application/octet-stream"
            else:
                buf = io.BytesIO()
                with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
                    for f in files:
                        zf.write(f, f.relative_to(tmp).as_posix())
                data, filename = buf.getvalue(), f"{info.name}-{fmt}.zip"
                media = "application/zip"
        return Response(
            data,
            media_type=media,
            headers={"content-disposition": _attachment(filename), "cache-control": "no-store"},
        )

    def runs_page(request: Request) -> Response:
        listed = runs_mod.list_runs(library.settings.runs_dir)
        return page(
            request,
            "runs.html",
            title="training runs: conceptlib",
            runs=[r for r in listed if r.running],
            ended=[r for r in listed if not r.running],
            runs_dir=str(library.settings.runs_dir),
            spark=runs_mod.sparkline_points,
        )

    def run_sample(request: Request) -> Response:
        run = runs_mod.find_run(library.settings.runs_dir, request.path_params["name"])
        if run is None or run.last_sample is None:
            raise NotFound("no such run, or it has no sample yet")
        runs_dir = library.settings.runs_dir.resolve()
        if not run.last_sample.resolve().is_relative_to(runs_dir):
            raise NotFound("no such run, or it has no sample yet")  # served from runs/ only
        return _image_file(run.last_sample)

    # ------------------------------------------------------------------ writes

    async def form_of(request: Request) -> dict[str, str]:
        """The POST's url-encoded form, after the CSRF and Origin checks."""
        if not same_origin(request.headers.get("origin"), hosts):
            raise UsageError("this form was sent from another site; reload the page and retry")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                raise UsageError(f"the form is larger than {MAX_FORM_BYTES // 1024} KiB")
        try:
            fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=20)
        except (UnicodeDecodeError, ValueError):
            raise UsageError("the form could not be read (expected UTF-8 url-encoded)") from None
        form = {k: v[-1] for k, v in fields.items()}
        if not sessions.check(request.state.session, form.get("csrf")):
            raise UsageError(
                "the form's security token is missing or stale; reload the page and retry",
                hint="every change needs the token of this browser session",
            )
        return form

    async def edit_tags(request: Request) -> Response:
        form = await form_of(request)
        sha = request.path_params["sha"]

        def work() -> None:
            info = entry(sha)
            add, remove = _tag_list(form.get("add", "")), _tag_list(form.get("remove", ""))
            if not add and not remove:
                raise UsageError("nothing to do: give a tag to add or to remove")
            library.tag(info.name, add=add, remove=remove)

        await run_in_threadpool(work)
        return RedirectResponse(f"/c/{sha}#tags", status_code=303)

    async def edit_fields(request: Request) -> Response:
        form = await form_of(request)
        sha = request.path_params["sha"]

        def work() -> None:
            info = entry(sha)
            changes: dict[str, str] = {}
            if "kind" in form and form["kind"] != info.kind:
                changes["kind"] = form["kind"]
            if "description" in form and form["description"].strip() != (info.description or ""):
                changes["description"] = form["description"].replace("\r\n", "\n")
            if not changes:
                raise UsageError("nothing changed: edit the kind or the description first")
            library.update(info.name, **changes)

        await run_in_threadpool(work)
        return RedirectResponse(f"/c/{sha}#edit", status_code=303)

    async def rename(request: Request) -> Response:
        form = await form_of(request)
        sha = request.path_params["sha"]

        def work() -> None:
            info = entry(sha)
            new = form.get("name", "").strip()
            if not new:
                raise UsageError("give the new name")
            library.rename(info.name, new)

        await run_in_threadpool(work)
        return RedirectResponse(f"/c/{sha}", status_code=303)

    async def on_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ConceptlibError)
        return error_page(request, exc)

    async def not_found(request: Request, exc: Exception) -> Response:
        return error_page(request, NotFound("no such page"))

    routes = [
        Route("/", gallery),
        Route("/c/{sha}", concept),
        Route("/c/{sha}/preview/{index:int}", preview),
        Route("/c/{sha}/export/{fmt}", download),
        Route("/c/{sha}/tags", edit_tags, methods=["POST"]),
        Route("/c/{sha}/edit", edit_fields, methods=["POST"]),
        Route("/c/{sha}/rename", rename, methods=["POST"]),
        Route("/thumb/{sha}", thumb),
        Route("/runs", runs_page),
        Route("/runs/{name:path}/sample", run_sample),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={ConceptlibError: on_error, 404: not_found},
    )
    app.state.library = library
    return Guard(app, hosts=hosts, sessions=sessions)


def _choice(value: str | None, allowed: list[str], what: str) -> str | None:
    if not value:
        return None
    if value not in allowed:
        raise UsageError(f"unknown {what} {value!r}; expected one of {', '.join(allowed)}")
    return value


def _page_number(value: str | None) -> int:
    if not value:
        return 1
    if not value.isdigit() or not 1 <= int(value) <= 10_000_000:
        raise UsageError(f"page must be a number from 1, not {value[:20]!r}")
    return int(value)


def _tag_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _config_rows(config: dict[str, Any]) -> list[tuple[str, str]]:
    return [(k, str(v)) for k, v in sorted(config.items()) if k != "images"]


def _image_file(path: Path) -> Response:
    with open(path, "rb") as fh:
        kind = thumbs.image_type(fh.read(16))
    if kind is None:
        raise UsageError("this file is not a PNG, JPEG or WebP image; it is not served")
    return FileResponse(path, media_type=kind[1], headers={"cache-control": "private, max-age=60"})


def _attachment(filename: str) -> str:
    """A Content-Disposition for ``filename``: an ASCII fallback and the UTF-8 name."""
    fallback = re.sub(r"[^A-Za-z0-9._-]", "_", filename) or "download"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"
