"""Information units: immutable, content-addressed, with metadata and lineage.

A unit's identity is the CID of its content. A revision is a new unit whose `parents`
name the unit(s) it revises; nothing about an existing unit ever changes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, field_serializer, field_validator

from .. import cid as cidlib
from ..errors import InvalidInput, invalid_input
from ..json_depth import MAX_DEPTH, deeper_than

MEDIA_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*(;.*)?$", re.IGNORECASE)
LABEL = re.compile(r"^[a-z0-9][a-z0-9._:/-]{0,63}$")
DEFAULT_MEDIA_TYPE = "application/octet-stream"


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


class Unit(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    cid: str
    size: int = Field(ge=0)
    media_type: str = DEFAULT_MEDIA_TYPE
    title: str = Field(default="", max_length=1000)
    labels: tuple[str, ...] = ()
    source: str = Field(default="", max_length=2000)
    author: str = Field(default="", max_length=500)
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    metadata: Mapping[str, JsonValue] = Field(default_factory=dict)
    parents: tuple[str, ...] = ()

    @field_validator("cid")
    @classmethod
    def _cid(cls, v: str) -> str:
        return cidlib.validate(v)

    @field_validator("parents")
    @classmethod
    def _parents(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for p in v:
            cidlib.validate(p)
        if len(set(v)) != len(v):
            raise ValueError("a parent is named twice")
        return v

    @field_validator("media_type")
    @classmethod
    def _media_type(cls, v: str) -> str:
        v = _final_line_break_dropped(v)
        if not MEDIA_TYPE.fullmatch(v):
            raise ValueError(f"{v!r} is not a media type like text/plain")
        return v.lower()

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        v = tuple(_final_line_break_dropped(label) for label in v)
        for label in v:
            if not LABEL.fullmatch(label):
                raise ValueError(
                    f"{label!r} is not a label: lower-case letters, digits and . _ : / - (at most 64, starting with a letter or digit)"
                )
        return tuple(sorted(set(v)))

    @field_validator("created_at")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("needs a time zone")
        return v.astimezone(UTC)

    @field_validator("metadata", mode="before")
    @classmethod
    def _not_too_deep(cls, v: Any) -> Any:
        if deeper_than(v, MAX_DEPTH - 1):  # the event body holding it adds a level
            raise ValueError(f"nests deeper than {MAX_DEPTH - 1} levels")
        return v

    @field_validator("metadata")
    @classmethod
    def _frozen_metadata(cls, v: Mapping[str, JsonValue]) -> Mapping[str, JsonValue]:
        return _freeze(v)

    @field_serializer("metadata")
    def _plain_metadata(self, v: Mapping[str, JsonValue]) -> dict[str, Any]:
        return _thaw(v)

    @classmethod
    def create(cls, **fields: Any) -> Unit:
        """Build a unit, turning validation errors into InvalidInput that names the field."""
        try:
            return cls.model_validate(fields)
        except ValidationError as err:
            raise invalid(err) from None

    def revise(self, *, cid: str, size: int, also_from: tuple[str, ...] = (), **changes: Any) -> Unit:
        """A new unit with new content that names this one (and `also_from`) as parents."""
        if cid == self.cid:
            raise InvalidInput("cid", "a revision must have new content; the CID equals its parent's")
        fields = self.model_dump()
        fields.update(changes)
        fields.update(cid=cid, size=size, parents=(self.cid, *also_from), created_at=datetime.now(UTC))
        return Unit.create(**fields)


def invalid(err: ValidationError) -> InvalidInput:
    return invalid_input(err, top="(unit)")


def _final_line_break_dropped(value: str) -> str:
    """`value` without one final line break. Earlier checks (`re.match` with `$`) let one
    through, so records stored then may hold it: they still read, as the value without it,
    and a new value is stored without it too, never refused for it."""
    return value[:-1] if value.endswith("\n") else value
