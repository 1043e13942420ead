"""`cim keys`: make the nkey identities that agents and operators use to log in to NATS.

The seed is the secret: it goes to a file with mode 0600 and never to stdout. The public
key (U...) is what goes into the NixOS configuration (`services.cim.nats.users`, the
capability's `nkeyPublicKey`): nats-server only ever holds public keys.
"""

from __future__ import annotations

import re
from pathlib import Path

import typer

from ..identity import new_user_seed, public_key_of, write_seed
from .common import emit, fail, globals_of

__all__ = ["app", "new_user_seed", "public_key_of", "write_seed"]

app = typer.Typer(help="Make nkey identities: a seed file (mode 0600) and its public key.", no_args_is_help=True)

_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


@app.command("new")
def new(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="name of the identity, e.g. store or admin; the file is NAME.nk"),
    directory: Path = typer.Option(Path("."), "--dir", "-d", help="directory for the seed file (created if missing, mode 0700)."),
    force: bool = typer.Option(False, "--force", help="replace an existing seed file (its old identity stops working)."),
) -> None:
    """Create a user nkey: write the seed to DIR/NAME.nk (0600) and print the public key."""
    g = globals_of(ctx)
    if not _NAME.fullmatch(name):
        fail(f"NAME {name!r} may contain only letters, digits, '-' and '_'")
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as err:
        fail(f"cannot create the directory {directory}: {err.strerror}")
    path = directory / f"{name}.nk"
    seed = new_user_seed()
    try:
        write_seed(path, seed, force=force)
    except FileExistsError:
        fail(f"{path} already exists; keep it, or pass --force to replace it (its old public key stops working)")
    except OSError as err:
        fail(f"cannot write {path}: {err.strerror}")
    public_key = public_key_of(seed)
    emit(
        g,
        {"name": name, "seed_file": str(path.resolve()), "public_key": public_key},
        lambda d: d["public_key"],
    )
    if not g.json:
        typer.echo(f"seed written to {path} (mode 0600); put the public key above in the configuration", err=True)
