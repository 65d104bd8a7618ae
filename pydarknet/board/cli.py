"""``python -m pydarknet board``: serve the dashboard, or export it."""
from __future__ import annotations

import os

import click

from .server import TOKEN_ENV


@click.command("board")
@click.argument("backup_dir", default="backup", type=click.Path(file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; 0.0.0.0 exposes the board (and ingestion) to the network.")
@click.option("--port", default=6006, show_default=True, type=click.IntRange(0, 65535))
@click.option("--token", default=None, help=f"Token that senders must present to store metrics "
              f"(or ${TOKEN_ENV}); without one, ingestion is disabled.")
@click.option("--export", "export_path", default=None, type=click.Path(dir_okay=False),
              help="Write a self-contained HTML report of the runs and exit.")
@click.option("--png", "png_dir", default=None, type=click.Path(file_okay=False),
              help="Write one PNG per chart into this folder and exit.")
@click.option("--points", default=2000, show_default=True, type=click.IntRange(10, 20000),
              help="Points per series in an export.")
def board(backup_dir, host, port, token, export_path, png_dir, points):
    """Darkboard: live charts of every run under BACKUP_DIR (default ./backup).

    A run is a folder holding metrics.jsonl or log.csv (and map.txt for mAP); a _HIDE file in it hides it.
    """
    from . import export, server  # noqa: PLC0415  (keep `pydarknet --help` fast)

    if export_path or png_dir:
        if not os.path.isdir(backup_dir):
            raise click.BadParameter(f"{backup_dir} is not a folder", param_hint="BACKUP_DIR")
        if export_path:
            click.echo(f"wrote {export.export_html(backup_dir, export_path, points)}")
        if png_dir:
            for path in export.export_pngs(backup_dir, png_dir, points):
                click.echo(f"wrote {path}")
        return
    token = token or os.environ.get(TOKEN_ENV) or None
    try:
        httpd = server.make_server(backup_dir, host, port, token)
    except OSError as e:
        raise click.ClickException(f"cannot listen on {host}:{port} ({e.strerror}); pick another --port") from e
    click.echo(f"Darkboard on {httpd.url}/ showing {httpd.board.root}"
               + ("" if token else f" (ingestion disabled: no --token / ${TOKEN_ENV})"))
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"warning: listening on {host}: anyone who can reach this port can read the charts", err=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.close()
