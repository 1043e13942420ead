"""S3 import: list a bucket prefix (once, or every `interval` seconds) and store each new
or changed object as a unit.

Incremental: after an object is stored, its ETag is kept in the hub's KV bucket under a
key derived from the connector's name and the object key; the next listing skips objects
whose ETag is unchanged. A crash between the put and the KV write imports the object
again, which stores nothing new (units are content-addressed), so there are never two
units for one object version.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import tempfile
from pathlib import Path

from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict, Field

from ..errors import CimError, InvalidInput, UnitExpiredError
from ..plugins import Plugin
from .connectors import ConnectorContext
from .metrics import S3_OBJECTS as OBJECTS


class S3ImportSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bucket: str
    prefix: str = ""
    endpoint_url: str | None = Field(default=None, description="for MinIO, Wasabi, seaweedfs; AWS when unset")
    region: str = "us-east-1"
    access_key_id_file: Path | None = None
    secret_access_key_file: Path | None = None
    interval: float = Field(default=0, ge=0, description="seconds between listings; 0 imports once")
    labels: list[str] = Field(default_factory=list)


COPY_CHUNK = 1024 * 1024  # bytes read from an object at a time


def _read(path: Path | None) -> str | None:
    return Path(path).read_text().strip() if path else None


class S3Import:
    def __init__(self, settings: S3ImportSettings, ctx: ConnectorContext):
        self.s = settings
        self.ctx = ctx
        self._client = None

    def client(self):
        if self._client is None:
            import boto3

            self._client = boto3.client(
                "s3", endpoint_url=self.s.endpoint_url, region_name=self.s.region,
                aws_access_key_id=_read(self.s.access_key_id_file),
                aws_secret_access_key=_read(self.s.secret_access_key_file),
            )
        return self._client

    def _key(self, object_key: str) -> str:
        return f"s3.{self.ctx.name}.{hashlib.sha256(object_key.encode()).hexdigest()[:40]}"

    def _list(self) -> list[tuple[str, str, int]]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.s.bucket, Prefix=self.s.prefix)
        return [(o["Key"], o.get("ETag", "").strip('"'), o.get("Size", 0))
                for page in pages for o in page.get("Contents", []) if not o["Key"].endswith("/")]

    def _download(self, key: str, etag: str, path: Path) -> bool:
        """The object as it was listed (its ETag) into `path`; False when it has changed since:
        an object overwritten while it is read must not be stored as a mix of two versions, nor
        recorded under the ETag of the one that was listed."""
        try:
            answer = self.client().get_object(Bucket=self.s.bucket, Key=key, IfMatch=etag)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
                return False
            raise
        with answer["Body"] as body, path.open("wb") as out:
            shutil.copyfileobj(body, out, COPY_CHUNK)
        return True

    async def run(self) -> None:
        while not self.ctx.stopping.is_set():
            try:
                n = await self.sync()
                self.ctx.log.info("s3 import %s: %d new objects from s3://%s/%s", self.ctx.name, n, self.s.bucket, self.s.prefix)
            except CimError as err:
                self.ctx.log.warning("s3 import %s: %s", self.ctx.name, err)
            except Exception as err:  # boto errors: S3 down or refusing; try at the next interval
                self.ctx.log.warning("s3 import %s: listing s3://%s/%s failed: %s", self.ctx.name, self.s.bucket, self.s.prefix, err)
            if not self.s.interval:
                return
            try:
                await asyncio.wait_for(self.ctx.stopping.wait(), self.s.interval)
            except TimeoutError:
                pass

    async def sync(self) -> int:
        """One listing; returns how many objects were imported."""
        kv = await self.ctx.state()
        imported = 0
        for key, etag, _size in await asyncio.to_thread(self._list):
            state_key = self._key(key)
            try:
                known = (await kv.get(state_key)).value.decode()
            except Exception:  # no entry yet
                known = None
            if known == etag:
                continue
            with tempfile.TemporaryDirectory(prefix="cim-s3-") as tmp:
                local = Path(tmp) / (key.rsplit("/", 1)[-1] or "object")
                if not await asyncio.to_thread(self._download, key, etag, local):
                    self.ctx.log.info("s3 import %s: s3://%s/%s changed while it was read; it is taken at the next "
                                      "listing", self.ctx.name, self.s.bucket, key)
                    continue
                try:
                    await self.ctx.units.put_file(local, labels=self.s.labels, source=f"s3://{self.s.bucket}/{key}")
                    OBJECTS.labels(self.ctx.name, "imported").inc()
                    imported += 1
                except (InvalidInput, UnitExpiredError) as err:  # refused for good: recorded, and the next object
                    OBJECTS.labels(self.ctx.name, "failed").inc()
                    await self.ctx.record_failure(f"s3://{self.s.bucket}/{key}", str(err))
            await kv.put(state_key, etag.encode())
        return imported


# Found through the `cim.plugins` entry point `s3-import = "cim.hub.s3_import:plugin"`, like a third party's.
plugin = Plugin(
    name="s3-import", version="1.0.0", kind="connector", provides={"ingest.s3": "1.0.0"}, settings=S3ImportSettings,
    connector=S3Import, description="objects under an S3 prefix become units, incrementally",
)
