"""``serve``: the local web catalog (``conceptlib.web``), served by uvicorn."""

from __future__ import annotations

import click

from conceptlib.cli.common import echo_err


@click.command("serve")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind. Anything but loopback needs --allow-remote.",
)
@click.option(
    "--port", type=click.IntRange(1, 65535), default=7861, show_default=True, help="Port."
)
@click.option(
    "--allow-remote",
    is_flag=True,
    help="Allow a --host other than loopback: anyone who reaches it can browse and edit "
    "the catalog (there is no login).",
)
@click.option("--open", "open_browser", is_flag=True, help="Open the page in a browser.")
def serve_cmd(host: str, port: int, allow_remote: bool, open_browser: bool) -> None:
    """Browse the catalog in a web page: a gallery with previews and filters, a page per
    concept (previews, loss curve, hashes, provenance, prompt snippets for each UI,
    downloads), tag / kind / description edits and renames, and the training runs in
    progress. Serves CONCEPTLIB_HOME's catalog (or CONCEPTLIB_DATABASE_URL's) until
    Ctrl-C.

    Binds to 127.0.0.1 by default. Requests naming another Host are refused (DNS
    rebinding); every change is a POST carrying the browser session's token.

    \b
    Examples:
      conceptlib serve --open
      conceptlib serve --port 8000
      conceptlib serve --host 192.168.1.20 --allow-remote   # reachable on the LAN
    """
    from conceptlib.errors import UsageError
    from conceptlib.web.security import is_loopback, is_wildcard

    if is_wildcard(host):
        raise UsageError(
            f"--host {host} binds every interface, and requests must name the bound "
            "address in their Host header",
            hint="give the address clients will use, e.g. --host 192.168.1.20 --allow-remote",
        )
    if not is_loopback(host):
        if not allow_remote:
            raise UsageError(
                f"--host {host} is reachable from other machines, and the page has no login",
                hint="add --allow-remote to serve it there anyway",
            )
        echo_err(
            f"warning: serving on {host}:{port}: anyone who can reach it can browse and "
            "edit this catalog (no login, no TLS)"
        )
    _check_free(host, port)
    import uvicorn

    from conceptlib.cli.common import open_library
    from conceptlib.web.app import create_app

    lib = open_library()
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/"
    try:
        app = create_app(lib, host=host, port=port)
        config = uvicorn.Config(
            app, host=host, port=port, log_level="warning", server_header=False, access_log=False
        )
        server = uvicorn.Server(config)
        echo_err(f"serving {lib.settings.home} at {url} (Ctrl-C stops)")
        if open_browser:
            import threading
            import webbrowser

            threading.Timer(0.8, webbrowser.open, args=(url,)).start()
        server.run()
    finally:
        lib.close()


def _check_free(host: str, port: int) -> None:
    """Refuse a port something else listens on, with the reason (before uvicorn starts)."""
    import socket

    from conceptlib.errors import UsageError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            s.bind((host, port))
        except OSError as exc:
            raise UsageError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                hint="choose another --port (or stop what is using it)",
            ) from None
