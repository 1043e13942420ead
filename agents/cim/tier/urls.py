"""Tiers addressed by URL, with the settings each kind needs.

- `jetstream://BUCKET`: a JetStream object bucket (the hot tier is `jetstream://CIM_CONTENT`)
- `s3://bucket/prefix`: MinIO, Wasabi or any S3, with `endpoint`, `region`,
  `addressing_style` and `credentials_file` (secrets only ever as a file)
- `file:///path`: a directory, the embedded default of `cim up`
"""

from __future__ import annotations

import configparser
import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from .errors import TierConfigError
from .events import TIER_NAME

SCHEMES = ("jetstream", "s3", "file")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZES = {"": 1, "b": 1, "k": 1024, "kib": 1024, "m": 1024**2, "mib": 1024**2, "g": 1024**3, "gib": 1024**3}


def _duration(v: object) -> object:
    """Seconds, or a string like "90s", "15m", "12h", "30d", "2w"."""
    if isinstance(v, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", v)
        if not m:
            raise ValueError(f"{v!r} is not a duration: use seconds or a number with s, m, h, d or w")
        return float(m.group(1)) * _UNITS[m.group(2) or "s"]
    return v


def _size(v: object) -> object:
    """Bytes, or a string like "16MiB", "1G", "512k"."""
    if isinstance(v, str):
        m = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", v)
        if not m or m.group(2).lower() not in _SIZES:
            raise ValueError(f"{v!r} is not a size: use bytes or a number with k, M or G (KiB, MiB, GiB)")
        return int(m.group(1)) * _SIZES[m.group(2).lower()]
    return v


Duration = Annotated[float, BeforeValidator(_duration), Field(ge=0)]
Size = Annotated[int, BeforeValidator(_size), Field(ge=0)]


class TierSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=TIER_NAME, description="recorded in events: never rename a tier that holds data")
    url: str = Field(description="jetstream://BUCKET, s3://bucket/prefix or file:///path")
    endpoint: str | None = Field(default=None, description="S3 endpoint URL (MinIO, Wasabi); AWS when unset")
    region: str = "us-east-1"
    addressing_style: Literal["path", "virtual", "auto"] = "path"
    credentials_file: Path | None = Field(
        default=None,
        description="file with the S3 keys: AWS_ACCESS_KEY_ID=/AWS_SECRET_ACCESS_KEY= lines, "
        "MINIO_ROOT_USER=/MINIO_ROOT_PASSWORD= lines, or an AWS credentials file",
    )
    multipart_threshold: Size = 16 * 1024**2
    multipart_chunksize: Size = Field(default=8 * 1024**2, ge=5 * 1024**2)
    max_concurrency: int = Field(default=4, ge=1, le=64, description="parts in flight per transfer")
    max_bandwidth: Size | None = Field(default=None, description="bytes per second per transfer; unset: no limit")
    timeout: Duration = Field(default=10, gt=0, description="seconds to connect or read before the tier counts as down")
    checksum: Literal["crc32", "sha256"] = Field(
        default="crc32",
        description="the S3 checksum each upload carries and the server checks against what it stored; the bytes "
        "sent were hashed to their CID already, so this guards the transfer and the disk, as the AWS SDKs' own "
        "CRC32 default does; sha256 makes the server hash every byte with SHA-256 too (about 10% slower)",
    )

    @model_validator(mode="after")
    def _check(self) -> TierSpec:
        parts = urlsplit(self.url)
        if parts.scheme not in SCHEMES:
            raise ValueError(
                f"url {self.url!r}: unknown scheme {parts.scheme or '(none)'!r}; use s3://bucket/prefix, "
                "file:///absolute/path or jetstream://BUCKET"
            )
        if parts.scheme == "s3":
            if not parts.netloc:
                raise ValueError(f"url {self.url!r}: name the bucket, as in s3://bucket/prefix")
            if self.credentials_file is None:
                raise ValueError(f"tier {self.name!r} ({self.url}) needs credentials_file: a file holding its S3 keys")
        if parts.scheme == "file" and (parts.netloc or not parts.path.startswith("/")):
            raise ValueError(f"url {self.url!r}: use an absolute path, as in file:///var/lib/cim/warm")
        if parts.scheme == "jetstream" and not re.fullmatch(r"[A-Za-z0-9_-]+", parts.netloc or ""):
            raise ValueError(f"url {self.url!r}: name the object bucket, as in jetstream://CIM_CONTENT")
        return self

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme

    @property
    def bucket(self) -> str:
        return urlsplit(self.url).netloc

    @property
    def prefix(self) -> str:
        p = urlsplit(self.url).path.strip("/")
        return f"{p}/" if p else ""

    @property
    def path(self) -> Path:
        return Path(urlsplit(self.url).path)

    def where(self) -> str:
        """The URL for people and events (never a secret)."""
        return f"{self.url} at {self.endpoint}" if self.endpoint else self.url


def read_credentials(spec: TierSpec) -> tuple[str, str]:
    """The access key and secret from `credentials_file`, or an error that says what to fix."""
    path = spec.credentials_file
    assert path is not None
    fix = f"fix credentials_file of tier {spec.name!r}"
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise TierConfigError(
            f"tiers.{spec.name}.credentials_file",
            f"{path} does not exist; write AWS_ACCESS_KEY_ID=... and AWS_SECRET_ACCESS_KEY=... lines into it, or {fix}",
        ) from None
    except OSError as err:
        raise TierConfigError(f"tiers.{spec.name}.credentials_file", f"cannot read {path}: {err.strerror}; {fix}") from None
    values: dict[str, str] = {}
    if text.lstrip().startswith("["):
        ini = configparser.ConfigParser()
        ini.read_string(text)
        section = ini["default"] if "default" in ini else ini[ini.sections()[0]]
        values = {k.upper(): v for k, v in section.items()}
    else:
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                k, v = line.split("=", 1)
                values[k.strip().removeprefix("export ").strip().upper()] = v.strip().strip("'\"")
    key = values.get("AWS_ACCESS_KEY_ID") or values.get("MINIO_ROOT_USER") or values.get("ACCESS_KEY")
    secret = values.get("AWS_SECRET_ACCESS_KEY") or values.get("MINIO_ROOT_PASSWORD") or values.get("SECRET_KEY")
    if not key or not secret:
        raise TierConfigError(
            f"tiers.{spec.name}.credentials_file",
            f"{path} holds no keys; it needs AWS_ACCESS_KEY_ID= and AWS_SECRET_ACCESS_KEY= lines "
            "(MINIO_ROOT_USER=/MINIO_ROOT_PASSWORD= or an AWS credentials file work too)",
        )
    return key, secret
