"""The ``geosane`` command line.

Each stage package may provide ``geosane.<stage>.cli`` with a ``register(app, bench)`` function
that adds its commands to the root app and its benchmarks to ``geosane bench``. Stage CLI modules
keep heavy imports (torch, timm, ...) inside their commands so that ``geosane --help`` is quick.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

import typer

from geosane import __version__
from geosane.console import console
from geosane.errors import GeosaneError, Interrupted

# Modules that may provide ``register(app, bench)``, in the order their commands are listed.
CLI_MODULES = (
    "geosane.data.cli",
    "geosane.zoo.cli",
    "geosane.tokens.cli",
    "geosane.autoencoder.cli",
    "geosane.generation.cli",
    "geosane.downstream.cli",
    "geosane.analysis.cli",
    "geosane.difuser.cli",
    "geosane.benchmark.cli",
    "geosane.demo",
)

app = typer.Typer(
    name="geosane",
    help="Learn from models, not data: a geospatial model foundry, transfer analysis and SatDiFuser.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
bench_app = typer.Typer(help="Performance benchmarks (throughput, memory).", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


def _version_callback(value: bool) -> None:
    if value:
        print(f"geosane {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Show version."
    ),
) -> None:
    """geosane command line."""


def _register_stages() -> None:
    for name in CLI_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        if found:
            importlib.import_module(name).register(app, bench_app)


_register_stages()


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning user errors into one-line messages with exit status 2.

    Messages name the command-line flags (:meth:`GeosaneError.cli_message`) where the library's
    message names a Python parameter.
    """
    try:
        app(args=argv, prog_name="geosane")
    except Interrupted as exc:
        console.print(f"[yellow]interrupted:[/] {exc.cli_message()}", highlight=False, soft_wrap=True)
        sys.exit(130)
    except GeosaneError as exc:
        console.print(f"[bold red]error:[/] {exc.cli_message()}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        sys.exit(130)
    except SystemExit as exc:
        if exc.code == 130:  # Typer turns Ctrl-C into a silent exit 130
            console.print("[yellow]interrupted[/]")
        raise
