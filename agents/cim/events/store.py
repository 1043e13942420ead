"""Append and read events on the CIM_EVENTS stream.

Concurrency control is the server's: an append that names an expected revision carries
`Nats-Expected-Last-Subject-Sequence` with the `-Subject` form over the aggregate's
subjects, so two writers racing with the same revision cannot both win. A revision is the
stream sequence of the aggregate's last event (0: the aggregate has none yet).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from nats.aio.client import Client
from nats.js.errors import APIError, NoStreamResponseError

from ..errors import CimError, ConcurrencyConflict, InvalidInput, JetStreamUnavailable, NotFound
from ..names import EVENTS_STREAM
from ..nats.api import JsError, error_code, no_responders, not_found
from ..nats.publish import publisher_for
from ..nats.read import read_stream
from ..nats.retry import through_elections, transient
from .envelope import SUBJECT_PREFIX, Event, StoredEvent, aggregate_filter, validated

MAX_BATCH = 1000  # the server's limit for one atomic batch


@dataclass(frozen=True, slots=True)
class Appended:
    seq: int
    duplicate: bool = False


def _expect_headers(event: Event, expected_revision: int | None) -> dict[str, str]:
    h = event.headers()
    if expected_revision is not None:
        if expected_revision < 0:
            raise InvalidInput("expected_revision", "must be 0 (a new aggregate) or a stream sequence")
        aggregate = event.type.split(".", 1)[0]
        h["Nats-Expected-Last-Subject-Sequence"] = str(expected_revision)
        h["Nats-Expected-Last-Subject-Sequence-Subject"] = aggregate_filter(aggregate, event.aggregate_id)
    return h


class EventStore:
    def __init__(self, nc: Client, stream: str = EVENTS_STREAM, *, timeout: float = 5.0):
        self.nc = nc
        self.js = nc.jetstream(timeout=timeout)
        self.stream = stream
        self.timeout = timeout

    # --- appends ------------------------------------------------------------------------

    async def append(self, event: Event, expected_revision: int | None = None) -> Appended:
        event = validated(event)
        headers = {**_expect_headers(event, expected_revision), "Nats-Expected-Stream": self.stream}
        payload = event.payload()
        pub = publisher_for(self.nc)  # a third of nats-py's CPU per append (see cim.nats.publish)

        async def publish():
            fut = await pub.publish(event.subject, payload, headers)
            try:
                return await asyncio.wait_for(fut, self.timeout)
            finally:
                fut.cancel()  # no-op once answered; otherwise the answer is not waited for any more

        try:
            # The same Nats-Msg-Id on every attempt: a retry after a lost ack stores nothing twice.
            ack = await through_elections(publish, within=self.timeout * 3, what=f"append to {event.subject}")
        except APIError as err:
            if transient(err):
                raise await self._unavailable() from None
            raise self._map(err, event, expected_revision) from None
        except Exception as err:
            if transient(err):
                raise await self._unavailable() from None
            raise
        return Appended(ack.seq, bool(ack.duplicate))

    async def append_batch(self, events: Iterable[Event], expected_revision: int | None = None) -> Appended:
        """Store all the events or none (a JetStream atomic batch).

        `expected_revision` applies to the aggregate of the first event. A batch re-sent
        after an unknown outcome is recognised by its message ids and reported duplicate.
        """
        batch = [validated(e) for e in events]
        if not batch:
            raise InvalidInput("events", "a batch needs at least one event")
        if len(batch) > MAX_BATCH:
            raise InvalidInput("events", f"{len(batch)} events is over the batch limit of {MAX_BATCH}")
        batch_id = uuid.uuid4().hex
        last = len(batch)
        for i, event in enumerate(batch, 1):
            headers = _expect_headers(event, expected_revision if i == 1 else None)
            headers.update({"Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(i)})
            if i < last:
                await self.nc.publish(event.subject, event.payload(), headers=headers)
                continue
            headers["Nats-Batch-Commit"] = "1"
            try:
                msg = await self.nc.request(event.subject, event.payload(), headers=headers, timeout=self.timeout)
            except Exception as err:
                if no_responders(err):
                    raise self._no_stream() from None
                raise JetStreamUnavailable(
                    f"the batch commit got no answer ({type(err).__name__}); its outcome is unknown: "
                    "send the same events again, their message ids make the retry safe"
                ) from err
            resp = json.loads(msg.data)
            refused = resp.get("error")
            if refused is None:
                return Appended(resp["seq"])
            if error_code(resp) == JsError.BATCH_DUPLICATE_MSG_ID:
                return Appended(0, duplicate=True)
            raise self._map(APIError(**{k: refused.get(k) for k in ("code", "err_code", "description")}), batch[0],
                            expected_revision)
        raise AssertionError("unreachable")

    async def append_many(self, events: Iterable[Event], *, window: int = 2000) -> list[Appended]:
        """Pipelined appends without a revision check, each acked; the first failure is raised.
        All are validated first: bad input stores nothing."""
        out = await self.append_each([validated(e) for e in events], window=window, checked=True)
        for result in out:
            if isinstance(result, CimError):
                raise result
        return out  # type: ignore[return-value]

    async def append_each(self, events: Iterable[Event], *, expected_revision: int | None = None,
                          window: int = 2000, checked: bool = False) -> list[Appended | CimError]:
        """Pipelined appends, up to `window` in flight: each event's own outcome, in order.

        `expected_revision` (if given) applies to every event's own aggregate, e.g. 0 for
        "this aggregate must be new". An invalid event is not sent; its outcome is the error
        (`checked`: the caller has passed every event through `validated` already).
        The window stays under nats-py's own limit of pending publishes, so its semaphore never
        blocks; `wait_stall` would bound that wait but wraps every publish in a task, which
        costs more than half the throughput. Every wait here is bounded instead.
        """
        prepared: list[Event | CimError] = []
        for e in events:
            try:
                prepared.append(e if checked else validated(e))
            except CimError as err:
                prepared.append(err)
        futures: list[asyncio.Future | CimError] = []
        sent: list[asyncio.Future] = []
        oldest = 0
        pub = publisher_for(self.nc)
        try:
            for event in prepared:
                if isinstance(event, CimError):
                    futures.append(event)
                    continue
                if len(sent) - oldest >= window:
                    await self._acked(sent[oldest:oldest + 1])
                    while oldest < len(sent) and sent[oldest].done():
                        oldest += 1
                fut = await pub.publish(event.subject, event.payload(), _expect_headers(event, expected_revision))
                futures.append(fut)
                sent.append(fut)
            await self._acked(sent[oldest:])  # the rest at once: one wait, not one per append
        except BaseException:
            for fut in sent:  # no answer will be waited for any more
                fut.cancel()
            raise
        out: list[Appended | CimError] = []
        for event, outcome in zip(prepared, futures, strict=True):
            if isinstance(outcome, CimError):
                out.append(outcome)
                continue
            assert isinstance(event, Event)
            failure = outcome.exception()
            if isinstance(failure, NoStreamResponseError):
                out.append(self._no_stream())
            elif isinstance(failure, APIError):
                out.append(self._map(failure, event, expected_revision))
            elif failure is not None:
                out.append(JetStreamUnavailable(
                    f"append of {event.subject} was not acknowledged: {failure or type(failure).__name__}"))
            else:
                ack = outcome.result()
                out.append(Appended(ack.seq, bool(ack.duplicate)))
        return out

    async def _acked(self, futures: list[asyncio.Future]) -> None:
        if not futures:
            return
        _, late = await asyncio.wait(futures, timeout=self.timeout)
        if late:
            raise JetStreamUnavailable(
                f"{len(late)} appends were not acknowledged within {self.timeout:g}s; their outcome is unknown: "
                "send the same events again, their ids make the retry safe"
            )

    def _map(self, err: APIError, event: Event, expected_revision: int | None) -> CimError:
        if err.err_code == JsError.WRONG_LAST_SEQUENCE:
            return ConcurrencyConflict(
                aggregate_filter(event.type.split(".", 1)[0], event.aggregate_id),
                expected_revision if expected_revision is not None else -1,
                err.description or "",
            )
        return JetStreamUnavailable(f"append to {event.subject} refused: {err.description} (error {err.err_code})")

    async def _unavailable(self) -> CimError:
        """Why appends got no answer: a missing stream, or one without a leader."""
        try:
            msg = await self.nc.request(f"$JS.API.STREAM.INFO.{self.stream}", b"", timeout=self.timeout)
            if error_code(json.loads(msg.data)) == JsError.STREAM_NOT_FOUND:
                return self._no_stream()
        except Exception:  # no answer either: the cluster itself is in trouble
            pass
        return JetStreamUnavailable(
            f"the event stream {self.stream} did not accept appends for {self.timeout * 3:g}s: it has no leader "
            "(are enough cluster nodes up?) or JetStream is down; try again when `cim status` answers"
        )

    def _no_stream(self) -> CimError:
        return JetStreamUnavailable(
            f"no stream takes {SUBJECT_PREFIX}.> subjects; run `cim provision` (or `cim up`) to create {self.stream}"
        )

    # --- reads --------------------------------------------------------------------------

    async def revision(self, aggregate: str, aggregate_id: str) -> int:
        """The sequence of the aggregate's last event, 0 if it has none."""
        try:
            return (await self.last(aggregate_filter(aggregate, aggregate_id))).seq
        except NotFound:
            return 0

    async def read(
        self,
        subjects: list[str] | None = None,
        *,
        start_seq: int = 1,
        follow: bool = False,
        batch: int = 256,
    ) -> AsyncIterator[StoredEvent]:
        """Events from `start_seq` in stream order; with `follow`, history then live."""
        async for m in read_stream(
            self.nc, self.stream, subjects or [f"{SUBJECT_PREFIX}.>"], start_seq=start_seq, follow=follow,
            batch=batch, timeout=self.timeout,
        ):
            yield StoredEvent.from_message(m.subject, m.seq, m.headers, m.data)

    async def aggregate(self, aggregate: str, aggregate_id: str) -> list[StoredEvent]:
        return [e async for e in self.read([aggregate_filter(aggregate, aggregate_id)])]

    async def last(self, subject: str) -> StoredEvent:
        """The last event on a subject (wildcards allowed), as the stream leader has it.

        Not a direct get: those may be answered by a lagging replica, and a unit just put
        must be found by the next command.
        """
        try:
            msg = await self.js.get_last_msg(self.stream, subject)
        except Exception as err:
            if _is_not_found(err):
                raise NotFound(f"no event on {subject}") from None
            raise JetStreamUnavailable(f"cannot read {subject}: {err or type(err).__name__}") from err
        return StoredEvent.from_message(msg.subject or "", msg.seq or 0, dict(msg.headers or {}), msg.data or b"")


def _is_not_found(err: BaseException) -> bool:
    return not_found(err)
