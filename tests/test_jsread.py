"""The one read primitive against a real server, where the stream changes under a read."""

from __future__ import annotations

from cim.jsread import read_stream
from cim.provision import ProvisionSpec, StreamSpec, provision

STREAM = "READS"


async def test_a_bounded_read_whose_end_disappears_meanwhile_ends_at_what_is_left(nc):
    # What a registry bucket's TTL does: the messages the leader named as the end expire
    # while the read is under way. The read must end, not wait for them.
    await provision(nc, ProvisionSpec(streams=[StreamSpec(name=STREAM, subjects=["read.>"])]))
    js = nc.jetstream()
    for i in range(5):
        await js.publish("read.x", f"m{i}".encode())
    got = []
    async for m in read_stream(nc, STREAM, ["read.>"], batch=1, resume_wait=0.1, resume_for=5):
        got.append(m.data)
        if m.seq == 1:  # the read holds no open request while its caller has a message
            for seq in (4, 5):
                await js.delete_msg(STREAM, seq)
    assert got == [b"m0", b"m1", b"m2"]
