"""A faster parser for the headers of incoming messages, installed on CIM's connections.

Every event carries a dozen CloudEvents headers, and nats-py parses a header block line by
line in bytes (a split, a partition, two strips and a decode per line): about 8 µs for
one event's headers, the largest single cost left on the pipeline's receive path. Decoding
the block once and splitting the text gives the same dict in about 2 µs.

The result is the same as nats-py's for every block (tested against it). Anything unusual
goes to nats-py's own parser: a status line (`NATS/1.0 404 ...`), bytes that are not UTF-8,
or a client without the hook, in which case nothing is installed.
"""

from __future__ import annotations

import re

from nats.aio.client import Client

_PREFIX = b"NATS/1.0\r\n"
_SPACE = re.compile(r"\s")  # a name with whitespace inside is not a header name: skipped, as nats-py does


def install(nc: Client) -> bool:
    """Parse this connection's message headers with `parse`; False if nats-py has no hook."""
    original = getattr(nc, "_process_headers", None)
    if original is None:
        return False

    async def process_headers(headers: bytes) -> dict[str, str] | None:
        if not headers:
            return None
        parsed = parse(headers)
        return parsed if parsed is not None else await original(headers)

    nc._process_headers = process_headers  # type: ignore[method-assign]  # see the module doc
    return True


def parse(headers: bytes) -> dict[str, str] | None:
    """The header block as a dict, or None when nats-py's parser should handle it."""
    if not headers.startswith(_PREFIX) or not headers.isascii():
        return None  # a status line (`NATS/1.0 503`), or non-ASCII bytes: nats-py's rules apply
    out: dict[str, str] = {}
    for line in headers[len(_PREFIX):].decode("ascii").split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            name = name.strip()
            if not _SPACE.search(name):
                out[name] = value.strip()
    return out or None
