"""Storage tiering: JetStream (hot) -> S3 or files (warm, cold), read-through, backup, restore.

urls.py       tier settings and the URL schemes (jetstream://, s3://, file://)
backends.py   one interface over the three kinds of store, every read verified by CID
locations.py  the location index: a projection of the unit events
policies.py   which units move where, by age, size, labels and last access
migrate.py    the copy -> verify -> record -> delete protocol, resumable from the events
fetch.py      read-through: the agent streams a unit's bytes to `cim units get`
backup.py     event export to the archive tier, and rebuilding a leaf from it
"""
