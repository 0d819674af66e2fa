"""The `make demo` scenario on a running DLE devnet (`conet devnet up` first; `conet devnet down` after).

Every step is a `conet` command, run in this process and printed as typed:

1. alice buys a $20 note and bob a $10 note: each order is filled by the CBDC, the archive node that
   hosts the note sees `NoteMinted` through its chain mirror, draws 5 witnesses and a validator, has
   the CBDC sign the genesis block and registers the chain on the mainchain;
2. transfers on both notes (each final with the signatures of the creator, 5 witnesses, the validator
   and the archive group);
3. alice authorizes carol (a shop) to deduct up to $5 from her on note 1, and carol deducts $3.25
   without alice;
4. bob exits $4 of note 1: final on the note chain, certified by the archive group, paid by CoNETCash
   on the mainchain (minus the 0.2% exit fee);
5. the conservation check, the devnet's status, and a summary of who holds what.

`python -m offchain.devnet.demo [--dir DIR]`; exits non-zero if any step fails.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import click

__all__ = ["DemoError", "main", "run_scenario"]


class DemoError(RuntimeError):
    """A step of the scenario failed."""


def conet(args: Sequence[str], directory: Path | None) -> str:
    """Run `conet ARGS` in this process; print the command and its output; return the output."""
    from offchain.cli import main

    full = list(args)
    if directory is not None:
        # Every group takes the devnet directory: `cash|odex --devnet DIR …`, `devnet <command> --dir DIR`.
        full = (
            [full[0], "--devnet", str(directory), *full[1:]]
            if full[0] in ("cash", "odex")
            else [*full[:2], "--dir", str(directory), *full[2:]]
        )
    click.echo(f"\n$ conet {' '.join(args)}")
    output = io.StringIO()
    try:
        with contextlib.redirect_stdout(output):
            main.main(full, prog_name="conet", standalone_mode=False)
    except click.ClickException as error:
        click.echo(output.getvalue(), nl=False)
        raise DemoError(f"`conet {' '.join(args)}` failed: {error.format_message()}") from error
    click.echo(output.getvalue(), nl=False)
    return output.getvalue()


def run_scenario(directory: Path | None = None) -> None:
    """The scenario of the module docstring."""
    started = time.monotonic()
    for wallet in ("alice", "bob", "carol"):
        conet(["cash", "--wallet", wallet, "address"], directory)
    conet(["cash", "--wallet", "alice", "buy", "20"], directory)
    conet(["cash", "--wallet", "bob", "buy", "10"], directory)
    conet(["cash", "--wallet", "alice", "transfer", "1", "bob", "4.5"], directory)
    conet(["cash", "--wallet", "bob", "transfer", "2", "carol", "2"], directory)
    out = conet(["cash", "--wallet", "alice", "authorize", "1", "carol", "5"], directory)
    found = re.search(r"authorization (\d+)", out)
    if found is None:
        raise DemoError("the authorization's id is not in the output")
    conet(["cash", "--wallet", "carol", "deduct", "1", "alice", found.group(1), "3.25"], directory)
    conet(["cash", "--wallet", "bob", "exit", "1", "4"], directory)
    conet(["devnet", "check"], directory)
    conet(["devnet", "status"], directory)
    click.echo("\nsummary")
    for wallet in ("alice", "bob", "carol"):
        conet(["cash", "--wallet", wallet, "balance"], directory)
    click.echo(f"\nthe scenario took {time.monotonic() - started:.1f} s")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m offchain.devnet.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=None, help="the devnet directory (default: .devnet)")
    args = parser.parse_args(argv)
    try:
        run_scenario(args.dir)
    except DemoError as error:
        click.echo(f"\ndemo failed: {error}", err=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
