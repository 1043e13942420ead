"""Read-through: the tier agent streams a unit's bytes from a colder tier to the reader.

Only the agent holds the S3 keys, so `cim units get` asks it on `cim.tier.fetch`. The
reply is a stream of chunk messages to the reader's inbox with credit-based flow control
(the reader acks every few chunks on the subject the agent names, each chunk's reply subject,
which a reader under its own NATS user may answer), then an end or error
message. While a tier is down the agent retries with backoff and says so (`retrying`
messages keep the reader waiting); when it gives up the reader gets the reason. Both sides
verify the CID; the reader holds the last chunk back until it checks out.

The reader acks only to an inbox (`_INBOX.` and plain tokens, no wildcards), and only when
the chunk's reply subject and its `Cim-Ack` header agree: whoever answers on the reader's
inbox names that subject, and a reader's credential may publish where an ack must never go
(a pipeline's may delete consumers and write its KV bucket). Anything else stops the read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg

from .. import cid as cidlib
from ..errors import CidMismatch, CimError
from ..store.content import ThreadedHasher
from ..tasks import Bounded
from .errors import TierAgentMissing, TierError, TierUnavailable
from .locations import UnitLocation

log = logging.getLogger("cim.tier.fetch")

FETCH_SUBJECT = "cim.tier.fetch"
# A request on FETCH_SUBJECT with this header asks whether a tier agent listens: every one
# does, whatever its name (its service name, `$SRV.PING.<name>`, is the operator's to set).
H_PROBE = "Cim-Probe"
CHUNK = 512 * 1024  # well under the default 1 MiB max_payload
WINDOW = 32  # chunks in flight before the agent waits for an ack (16 MiB)
H_SEQ, H_ACK, H_STATUS, H_ERROR = "Cim-Seq", "Cim-Ack", "Cim-Status", "Cim-Error"
# Where a reader may ack: an inbox (the tier agent's `_INBOX.<capability>.<id>`, or nats-py's
# `_INBOX.<id>`), tokens of letters, digits, '-' and '_': no wildcard, no other subject.
ACK_INBOX = re.compile(r"_INBOX(\.[A-Za-z0-9_-]+)+")


# --- the agent's side ----------------------------------------------------------------------


class FetchServer:
    """Serves fetch requests with `open_stream(cid) -> (where, verified chunks)`."""

    def __init__(self, nc: Client, open_stream: Callable[[str, Callable[[str], Awaitable[None]]], Awaitable[AsyncIterator[bytes]]],
                 tasks: Bounded, ack_timeout: float = 30.0):
        self.nc = nc
        self.open_stream = open_stream
        self.ack_timeout = ack_timeout
        self._sub: Any = None  # the subscription, while running
        self._probe_sub: Any = None
        # One task per request, at most so many at once: the next request waits in the
        # subscription's queue (this callback awaits a slot), not as a task in memory.
        self.tasks = tasks

    async def start(self, queue: str = "cim-tier") -> None:
        self._sub = await self.nc.subscribe(FETCH_SUBJECT, queue=queue, cb=self._on_request)
        # Probes on a subscription of their own: the reads' callback waits there for a free
        # slot when every one is taken, and a probe queued behind it made a busy agent look
        # absent (HEAD answered 503, a read gave up with "start it").
        self._probe_sub = await self.nc.subscribe(FETCH_SUBJECT, queue=f"{queue}-probe", cb=self._on_probe)

    async def stop(self) -> None:
        for sub in (self._sub, self._probe_sub):
            if sub is not None:
                await sub.unsubscribe()  # the runtime cancels the reads in flight (ctx.tasks); each reader is told
        self._sub = self._probe_sub = None

    async def _on_probe(self, msg: Msg) -> None:
        if msg.reply and (msg.headers or {}).get(H_PROBE):
            await self.nc.publish(msg.reply, b"", headers={H_STATUS: "ready"})

    async def _on_request(self, msg: Msg) -> None:
        if (msg.headers or {}).get(H_PROBE):
            return  # answered by _on_probe
        if self.tasks.running >= self.tasks.limit and msg.reply:
            # The reader's patience restarts with every status: a queued read is not abandoned.
            await self.nc.publish(msg.reply, b"", headers={
                H_STATUS: "retrying", H_ERROR: f"the tier agent is serving {self.tasks.limit} reads; waiting for a free slot"})
        await self.tasks.spawn(self._serve(msg), name="fetch")

    async def _serve(self, msg: Msg) -> None:
        reply = msg.reply
        if not reply:
            return
        acked = 0
        credit = asyncio.Event()

        async def on_ack(m: Msg) -> None:
            nonlocal acked
            acked = max(acked, int(m.data or 0))
            credit.set()

        ack_subject = self.nc.new_inbox()
        ack_sub = await self.nc.subscribe(ack_subject, cb=on_ack)

        async def retrying(text: str) -> None:
            await self.nc.publish(reply, b"", headers={H_STATUS: "retrying", H_ERROR: text[:900]})

        try:
            req = json.loads(msg.data or b"{}")
            cid = cidlib.validate(str(req.get("cid", "")))
            stream = await self.open_stream(cid, retrying)
            seq = 0
            pending = b""
            async for chunk in stream:
                pending += chunk
                while len(pending) >= CHUNK:
                    seq = await self._send(reply, ack_subject, seq, pending[:CHUNK], lambda: acked, credit)
                    pending = pending[CHUNK:]
            if pending:
                seq = await self._send(reply, ack_subject, seq, pending, lambda: acked, credit)
            await self.nc.publish(reply, b"", headers={H_STATUS: "end", H_SEQ: str(seq)})
        except asyncio.CancelledError:
            stopping = TierUnavailable("the tier agent stopped while serving this read; read it again")
            with contextlib.suppress(Exception):
                await self.nc.publish(reply, json.dumps(stopping.to_wire()).encode(),
                                      headers={H_STATUS: "error", H_ERROR: str(stopping)})
            raise
        except Exception as err:
            if not isinstance(err, CimError):
                log.exception("fetch failed")
                err = TierUnavailable(f"the tier agent failed to read the unit ({type(err).__name__}: {err}); see its log")
            # The reader gets the same class with the same message (CimError.from_wire).
            await self.nc.publish(reply, json.dumps(err.to_wire(), default=str).encode(),
                                  headers={H_STATUS: "error", H_ERROR: str(err)[:900]})
        finally:
            await ack_sub.unsubscribe()

    async def _send(self, reply: str, ack_subject: str, seq: int, data: bytes, acked: Callable[[], int], credit: asyncio.Event) -> int:
        seq += 1
        while seq - acked() > WINDOW:
            credit.clear()
            try:
                await asyncio.wait_for(credit.wait(), self.ack_timeout)
            except TimeoutError:
                raise TimeoutError("the reader stopped acknowledging chunks") from None
        # The ack subject as the chunk's reply subject too: a reader under its own NATS user may
        # answer it (allow_responses), where publishing to this agent's inbox is refused.
        await self.nc.publish(reply, data, reply=ack_subject, headers={H_SEQ: str(seq), H_ACK: ack_subject})
        return seq


# --- the reader's side ---------------------------------------------------------------------


async def fetch(nc: Client, u: UnitLocation, *, timeout: float = 30.0) -> AsyncGenerator[bytes, None]:
    """A unit's bytes from the tier agent, verified here too; the last chunk held back until
    they hash to the CID. `timeout`: the longest silence from the agent before giving up."""
    cid = u.cid
    inbox = nc.new_inbox()
    queue: asyncio.Queue[Msg] = asyncio.Queue()

    async def on_msg(m: Msg) -> None:
        queue.put_nowait(m)

    sub = await nc.subscribe(inbox, cb=on_msg)
    hasher = ThreadedHasher() if u.size > 8 * CHUNK else cidlib.Hasher()
    held: bytes | None = None
    expected_seq = 1
    try:
        await nc.publish(FETCH_SUBJECT, json.dumps({"cid": cid}).encode(), reply=inbox)
        # No subscriber means no reply at all: learn that at once rather than by timeout.
        await nc.flush()
        first = True
        loop = asyncio.get_running_loop()
        patience = loop.time() + 5.0  # an agent that is just starting subscribes within this
        while True:
            try:
                m = await asyncio.wait_for(queue.get(), 2.0 if first else timeout)
            except TimeoutError:
                if first and not await agent_listens(nc):
                    raise _no_agent(u) from None
                if first:
                    first = False
                    continue
                raise TierUnavailable(f"the tier agent stopped answering while sending {cid}; try again") from None
            first = False
            h = m.headers or {}
            status = h.get(H_STATUS)
            if h.get("Status") == "503":  # no responders: no agent, or one still starting
                if loop.time() < patience:
                    await asyncio.sleep(0.2)  # backoff before asking again
                    first = True
                    await nc.publish(FETCH_SUBJECT, json.dumps({"cid": cid}).encode(), reply=inbox)
                    continue
                raise _no_agent(u)
            if status is None:
                seq = int(h.get(H_SEQ, 0))
                if seq != expected_seq:
                    raise TierUnavailable(f"chunk {expected_seq} of {cid} was lost on the way; try again")
                expected_seq += 1
                hasher.update(m.data)
                if held is not None:
                    yield held
                held = m.data
                if seq % (WINDOW // 2) == 0:
                    await nc.publish(_ack_subject(m.reply, h.get(H_ACK), cid), str(seq).encode())
                continue
            if status == "retrying":
                log.info("%s", h.get(H_ERROR))
                continue
            if status == "error":
                try:
                    wire = json.loads(m.data) if m.data else None
                except (ValueError, RecursionError):  # not JSON, or nested too deep to be ours
                    wire = None
                raise CimError.from_wire(wire, fallback=h.get(H_ERROR) or "the tier agent failed")
            break  # end
    finally:
        if isinstance(hasher, ThreadedHasher):
            await asyncio.to_thread(hasher.finish)
        await sub.unsubscribe()
    actual = hasher.cid()
    if actual != cid or hasher.size != u.size:
        raise CidMismatch(cid, actual, where="tier agent's reply")
    if held is not None:
        yield held


def _ack_subject(reply: str | None, header: str | None, cid: str) -> str:
    """Where to ack a chunk: the agent's ack inbox, named by the chunk's reply subject and its
    `Cim-Ack` header alike (an older agent sets the header only)."""
    named = {s for s in (reply, header) if s}
    subject = named.pop() if len(named) == 1 else None
    if subject is None or not ACK_INBOX.fullmatch(subject):
        shown = " and ".join(repr(s[:120]) for s in (reply, header) if s) or "no subject"
        raise TierError(
            f"the answer to the read of {cid} asks for its acknowledgements on {shown}, not one inbox: "
            "refused, and the read stopped. Something other than a tier agent answers on cim.tier.fetch, "
            "or one misbehaves; check who holds the tier agent's NATS credential")
    return subject


async def agent_listens(nc: Client) -> bool:
    """Whether a tier agent answers on FETCH_SUBJECT (the one that reads colder tiers). An
    agent from before H_PROBE answers too: with an error about the missing CID."""
    try:
        await nc.request(FETCH_SUBJECT, b"", timeout=1.0, headers={H_PROBE: "1"})
        return True
    except Exception:  # no responders, a timeout, the connection gone: none answers now
        return False


def _no_agent(u: UnitLocation) -> CimError:
    where = ", ".join(sorted(u.tiers)) or "a colder tier"
    return TierAgentMissing(
        f"unit {u.cid} is in tier {where}, which only the tier agent can read, and no tier agent answers; "
        "start it (`cim up` runs one; on NixOS set services.cim.tier.enable) and try again"
    )
