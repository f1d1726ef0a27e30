"""The local web catalog behind ``conceptlib serve``: a Starlette app (:mod:`.app`),
its Jinja2 templates and static files, thumbnails (:mod:`.thumbs`), training runs in
progress (:mod:`.runs`), the "use it" panel (:mod:`.snippets`) and the request guards
(:mod:`.security`). A thin layer over :class:`~conceptlib.registry.library.Library`,
like the CLI; nothing but ``cli`` imports it."""
