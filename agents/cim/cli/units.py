"""`cim units`: put, get, show and list information units."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from pathlib import Path

import typer

from ..errors import CimError, InvalidInput, printable
from ..store.content import CHUNK_SIZE
from ..store.unit_store import PutResult, UnitStore, UnitView, guess_media_type
from ..store.units import Unit
from ..tier.fetch import fetch
from .common import emit, fail, globals_of, nats_connection, run

app = typer.Typer(help="Put, get, show and list information units.", no_args_is_help=True)

PUT_BATCH = 256  # small files stored per pipelined batch
PROGRESS_MIN_BYTES = 8 * 1024 * 1024  # smaller puts finish before a bar would be worth drawing
MAX_SIZE_HELP = "refuse units larger than this, in bytes; the content bucket's own limit applies anyway (env: CIM_MAX_UNIT_SIZE)"


def _unit_line(u: Unit) -> str:
    labels = f"  [{', '.join(u.labels)}]" if u.labels else ""
    return f"{u.cid}  {u.size:>10}  {u.media_type:<24} {u.title}{labels}"


def expand(paths: list[Path]) -> list[Path]:
    """Folders become the regular files below them (sorted, hidden ones left out). Every
    argument is checked before anything is stored: a missing, unreadable or special file
    anywhere fails the command with nothing stored."""
    out: list[Path] = []
    problems: list[str] = []
    for p in paths:
        if str(p) == "-":
            out.append(p)
        elif p.is_dir():
            try:
                found = sorted(f for f in p.rglob("*") if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts))
            except OSError as err:
                problems.append(f"{p}: cannot list it ({err.strerror})")
                continue
            out += found
        elif not p.exists():
            problems.append(f"{p}: no such file or folder")
        elif not p.is_file():
            problems.append(f"{p}: not a regular file")
        else:
            out.append(p)
    for f in out:
        if str(f) != "-" and not os.access(f, os.R_OK):
            problems.append(f"{f}: not readable")
    if problems:
        raise InvalidInput("files", "nothing was stored: " + "; ".join(problems))
    return out


@app.command("put")
def put(
    ctx: typer.Context,
    files: list[Path] = typer.Argument(..., help="files or folders (every file below them) to store; '-' reads standard input"),
    title: str | None = typer.Option(None, help="title (default: the file name)"),
    label: list[str] = typer.Option([], "--label", "-l", help="a label; repeat for several"),
    source: str = typer.Option("", help="where the information comes from"),
    author: str = typer.Option("", help="who made it"),
    media_type: str | None = typer.Option(None, help="media type (default: guessed from the name)"),
    parent: list[str] = typer.Option([], "--parent", help="CID this is a revision of; repeat for several"),
    max_size: int | None = typer.Option(None, envvar="CIM_MAX_UNIT_SIZE", help=MAX_SIZE_HELP),
) -> None:
    """Store files as units and print their CIDs."""
    g = globals_of(ctx)

    def meta() -> dict:
        m: dict = {"labels": label, "source": source, "author": author, "parents": parent}
        if title is not None:
            m["title"] = title
        if media_type is not None:
            m["media_type"] = media_type
        return m

    async def body() -> list[dict]:
        results = []
        paths = expand(files)
        async with nats_connection(g) as nc:
            store = UnitStore(nc, max_unit_size=max_size, timeout=g.timeout)
            total = sum(f.stat().st_size for f in paths if str(f) != "-" and f.is_file())
            show_bar = not g.json and sys.stderr.isatty() and (total >= PROGRESS_MIN_BYTES or len(paths) > 20)
            with typer.progressbar(length=total, label="storing", file=sys.stderr, hidden=not show_bar) as bar:

                def done(f: Path, r: PutResult) -> None:
                    row = {"file": str(f), "cid": r.unit.cid, "size": r.unit.size, "created": r.created}
                    results.append(row)
                    if not g.json:
                        if show_bar and sys.stdout.isatty():
                            # The bar shares the terminal: clear its line first, so the CID starts
                            # a line of its own (the bar draws itself again below it).
                            sys.stderr.write("\r\033[K")
                            sys.stderr.flush()
                        # As each one is stored: if a later file fails, these CIDs are known.
                        typer.echo(f"{row['cid']}  {row['file']}" + ("" if row["created"] else "  (already stored)"))

                # Small files go in pipelined batches (one round of lookups, chunks, index
                # entries and events for many; the next batch is read and sent while the last
                # one's answers come back); a big one, or standard input, on its own.
                small: list[Path] = []
                in_flight: asyncio.Task | None = None

                async def store_batch(batch: list[Path]) -> tuple[list[Path], list[bytes], list]:
                    datas = await asyncio.to_thread(lambda: [f.read_bytes() for f in batch])
                    meta_of = [{"title": f.name, "media_type": guess_media_type(f.name), **meta()} for f in batch]
                    return batch, datas, await store.put_small_many(list(zip(datas, meta_of, strict=True)))

                async def settle() -> None:
                    nonlocal in_flight
                    if in_flight is None:
                        return
                    task, in_flight = in_flight, None
                    batch, datas, outcomes = await task
                    for f, data, r in zip(batch, datas, outcomes, strict=True):
                        if isinstance(r, CimError):  # said with the file it is about; the rest was stored
                            named = type(r).with_message(f"{f}: {r}")
                            named.__dict__.update(r.__dict__)
                            raise named
                        bar.update(len(data))
                        done(f, r)

                async def send() -> None:
                    nonlocal in_flight
                    task = asyncio.create_task(store_batch(small[:]))
                    small.clear()
                    try:
                        await settle()  # the one before, reported in order while this one is on its way
                    except BaseException:
                        with contextlib.suppress(BaseException):
                            await task  # what was sent is stored (a put is idempotent); then the error
                        raise
                    in_flight = task

                for f in paths:
                    if str(f) != "-" and not parent and f.is_file() and f.stat().st_size <= CHUNK_SIZE:
                        small.append(f)
                        if len(small) >= PUT_BATCH:
                            await send()
                        continue
                    if small:
                        await send()
                    await settle()
                    if str(f) == "-":
                        done(f, await store.put_stream(sys.stdin.buffer, **meta()))
                    else:
                        done(f, await store.put_file(f, progress=bar.update, **meta()))
                if small:
                    await send()
                await settle()
        return results

    results = run(body)
    if g.json:
        emit(g, results)


@app.command("get")
def get(
    ctx: typer.Context,
    cid: str = typer.Argument(..., help="the unit's CID"),
    output: Path | None = typer.Option(None, "--output", "-o", help="write here instead of standard output"),
) -> None:
    """Write a unit's content to standard output or a file, verified against its CID."""
    g = globals_of(ctx)
    if output is not None:
        if output.is_dir():
            fail(str(InvalidInput("--output", f"{output} is a folder; give the path of a file to write")))
        if not output.parent.is_dir():
            fail(str(InvalidInput("--output", f"the folder {output.parent} does not exist")))

    async def body() -> None:
        async with nats_connection(g) as nc:
            store = UnitStore(nc, report_access=True, cold=fetch, timeout=g.timeout)  # access reports feed the tier's `idle` policies
            if output is None:
                out = sys.stdout.buffer
                async for chunk in store.get(cid):
                    out.write(chunk)
                out.flush()
                return
            # Write beside the target and rename only once the CID checked out: a failed
            # read never leaves a complete-looking wrong file behind.
            tmp = output.with_name(f".{output.name}.cim-partial")
            try:
                with tmp.open("wb") as out:
                    async for chunk in store.get(cid):
                        out.write(chunk)
                tmp.replace(output)
            except OSError as err:
                raise InvalidInput("--output", f"cannot write {output}: {err.strerror}") from None
            finally:
                tmp.unlink(missing_ok=True)

    run(body)


def _view_dict(v: UnitView) -> dict:
    return {
        "unit": v.unit.model_dump(mode="json"),
        "labels": list(v.labels),
        "children": v.children,
        "revision": v.revision,
        "events": [{"seq": e.seq, "type": e.type, "time": e.time, "agent": e.agent} for e in v.events],
    }


def _view_text(d: dict) -> str:
    u = d["unit"]
    lines = [
        f"cid:        {u['cid']}",
        f"title:      {u['title']}",
        f"size:       {u['size']} bytes",
        f"media type: {u['media_type']}",
        f"labels:     {', '.join(d['labels']) or '-'}",
        f"source:     {u['source'] or '-'}",
        f"author:     {u['author'] or '-'}",
        f"created:    {u['created_at']}",
        f"parents:    {', '.join(u['parents']) or '-'}",
        f"children:   {', '.join(d['children']) or '-'}",
    ]
    if u["metadata"]:
        lines.append("metadata:")
        lines += [f"  {k}: {v}" for k, v in u["metadata"].items()]
    lines.append("events:")
    lines += [f"  #{e['seq']} {e['type']} by {e['agent'] or '?'} at {e['time']}" for e in d["events"]]
    return "\n".join(lines)


@app.command("show")
def show(ctx: typer.Context, cid: str = typer.Argument(..., help="the unit's CID")) -> None:
    """A unit's metadata, lineage and events."""
    g = globals_of(ctx)

    async def body() -> dict:
        async with nats_connection(g) as nc:
            return _view_dict(await UnitStore(nc, timeout=g.timeout).show(cid))

    emit(g, run(body), _view_text)


@app.command("ls")
def ls(
    ctx: typer.Context,
    label: str | None = typer.Option(None, "--label", "-l", help="only units with this label"),
    limit: int | None = typer.Option(None, help="at most this many"),
) -> None:
    """List units, oldest first."""
    g = globals_of(ctx)

    async def body() -> list[dict]:
        async with nats_connection(g) as nc:
            return [u.model_dump(mode="json") async for u in UnitStore(nc, timeout=g.timeout).list(label=label, limit=limit)]

    units = run(body)
    emit(g, units, lambda us: "\n".join(_unit_line(Unit.model_validate(u)) for u in us) or "no units")



@app.command("related")
def related(ctx: typer.Context, cid: str = typer.Argument(..., help="the unit's CID"),
            limit: int = typer.Option(10, help="similar units at most")) -> None:
    """Units related to this one (references, derived-from, same source) and similar ones
    (more like this: units whose text shares its distinctive words)."""
    from ..nats.rpc import call
    from ..pipeline import api as pipeline_api

    g = globals_of(ctx)

    async def body() -> dict:
        async with nats_connection(g) as nc:
            reply = await call(nc, pipeline_api.RELATED, pipeline_api.CidRequest(cid=cid, limit=limit), timeout=g.timeout)
            return reply.model_dump(mode="json")

    def human(r: dict) -> str:
        lines = [f"{x['type']:<13} {'->' if x['direction'] == 'out' else '<-' if x['direction'] == 'in' else '<>'} "
                 f"{x['cid']}  {printable(x['title'])}" for x in r["related"]]
        lines += [f"{'similar':<13} ~  {h['cid']}  {printable(h['title'])}  ({h['score']:.2f})" for h in r["similar"]]
        return "\n".join(lines) or "no related or similar units"

    emit(g, run(body), human)
