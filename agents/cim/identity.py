"""NATS user identities (nkeys): a seed is the secret, its public key goes to the server.

A leaf module: `cim keys` and `cim up` both make identities with it.
"""

from __future__ import annotations

import os
from pathlib import Path

import nkeys


def new_user_seed() -> bytes:
    """A fresh user nkey seed (`SU...`), from 32 bytes of the OS's randomness."""
    return nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)


def public_key_of(seed: bytes) -> str:
    return nkeys.from_seed(seed).public_key.decode()


def write_seed(path: Path, seed: bytes, *, force: bool = False) -> None:
    """Write the seed to `path`, readable by its owner only.

    O_EXCL makes "do not overwrite" atomic; with `force` the old file is removed first
    rather than truncated, so a file someone else made readable never holds the new seed.
    """
    if force:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        # The mode given to open() is masked by the umask; say 0600 explicitly.
        os.fchmod(fd, 0o600)
        os.write(fd, seed + b"\n")
    finally:
        os.close(fd)


def ensure_identities(directory: Path, names: list[str]) -> dict[str, tuple[Path, str]]:
    """A seed file per name in `directory` (0700), made once and kept: name -> (path, public key)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    out = {}
    for name in names:
        path = directory / f"{name}.nk"
        if not path.exists():
            write_seed(path, new_user_seed())
        out[name] = (path, public_key_of(path.read_bytes().strip()))
    return out
