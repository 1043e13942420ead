"""The one spool: bytes collected from a stream before they are stored (an HTTP upload in the
hub, a pipe given to `cim units put -`, a copy between tiers).

They stay in memory while small, and past `in_memory` go to a temporary file, written off
the event loop in blocks of a mebibyte. With `hash=True` the spool computes the CID as the
bytes pass, so nothing reads them twice; `limit` refuses a stream past it as it arrives.
"""

from __future__ import annotations

import asyncio
import io
import tempfile
from collections.abc import AsyncIterator, Callable
from typing import IO, Self

from . import cid as cidlib

IN_MEMORY = 1024 * 1024
WRITE_BLOCK = 1024 * 1024  # bytes gathered before one write to the file (one thread hop)
READ_BLOCK = 1024 * 1024


class Spool:
    def __init__(self, *, in_memory: int = IN_MEMORY, limit: int | None = None,
                 too_large: Callable[[int], BaseException] | None = None, hash: bool = False,
                 on_chunk: Callable[[bytes], None] | None = None):
        self.in_memory = in_memory
        self.limit = limit
        # Given the size that arrived so far, past `limit`: the error to raise.
        self.too_large = too_large or (lambda size: ValueError(f"{size} bytes, over the limit of {limit}"))
        self.hasher = cidlib.Hasher() if hash else None
        self.on_chunk = on_chunk
        self.size = 0
        self._pending = bytearray()
        self._file: IO[bytes] | None = None

    async def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.limit is not None and self.size > self.limit:
            raise self.too_large(self.size)
        if self.hasher is not None:
            self.hasher.update(chunk)
        if self.on_chunk is not None:
            self.on_chunk(chunk)
        self._pending += chunk
        if self._file is None and self.size <= self.in_memory:
            return
        if len(self._pending) >= WRITE_BLOCK:
            await self._spill()

    async def _spill(self) -> None:
        if self._file is None:
            self._file = await asyncio.to_thread(tempfile.TemporaryFile)
        data, self._pending = bytes(self._pending), bytearray()
        await asyncio.to_thread(self._file.write, data)

    async def fill(self, chunks: AsyncIterator[bytes]) -> Self:
        async for chunk in chunks:
            await self.write(chunk)
        return self

    async def fill_from(self, reader: IO[bytes]) -> Self:
        """Everything `reader` (a pipe, a file) gives, read off the event loop."""
        while block := await asyncio.to_thread(reader.read, READ_BLOCK):
            await self.write(block)
        return self

    def held(self) -> bytes | None:
        """The bytes, when they are all in memory (small): None once they spilled to a file."""
        return bytes(self._pending) if self._file is None else None

    def cid(self) -> str:
        assert self.hasher is not None, "made without hash=True"
        return self.hasher.cid()

    async def file(self) -> IO[bytes]:
        """The bytes to read, from the start: in memory, or the temporary file."""
        if self._file is None:
            return io.BytesIO(bytes(self._pending))
        if self._pending:
            await self._spill()
        await asyncio.to_thread(self._file.flush)
        self._file.seek(0)
        return self._file

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._pending = bytearray()
