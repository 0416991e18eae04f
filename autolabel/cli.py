"""The ``autolabel`` command line: discover, eval, bench, backbones, serve, prelabel.

Sub-commands are imported lazily (torch and the server stack load only when a command needs them).
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

#: command name → "module:click command object"
COMMANDS = {
    "discover": "autolabel.cli_discover:discover_command",
    "backbones": "autolabel.cli_discover:backbones_command",
    "eval": "autolabel.evaluate:eval_command",
    "bench": "autolabel.bench:bench_command",
    "serve": "backend.serve:serve_command",
    "prelabel": "autolabel.prelabel:prelabel_command",
    "bench-backend": "backend.bench_backend:bench_backend_command",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup)
@click.option("-v", "--verbose", is_flag=True, help="Log debug details.")
def main(verbose: bool) -> None:
    """autolabel: training-free object discovery and Label Studio pre-labelling."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


if __name__ == "__main__":
    main()
