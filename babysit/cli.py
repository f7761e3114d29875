"""The `babysit` command: parses, calls the daemon over D-Bus, renders."""

from __future__ import annotations

import typer

from babysit import __version__

app = typer.Typer(no_args_is_help=True, add_completion=True, help="Supervised background runner.")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"babysit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """babysit: run long jobs under systemd caps, admitted only when the host has room."""


def main() -> None:
    app()
