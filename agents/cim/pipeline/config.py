"""The pipeline agent's settings, and the bucket of pipeline definitions it needs."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..capability import AgentConfig
from ..provision.spec import KvSpec, ProvisionSpec
from . import definitions
from .model import PipelineDef, default_pipelines


class Config(AgentConfig):
    capability: Literal["pipeline"] = "pipeline"
    pipelines: list[PipelineDef] = Field(default_factory=default_pipelines,
                                         description="pipelines this agent installs at start (by name)")
    max_content_bytes: int = Field(default=64 * 1024 * 1024, gt=0, description="largest unit a step reads")


def provision_spec() -> ProvisionSpec:
    return ProvisionSpec(include_core=False, kv=[KvSpec(bucket=definitions.BUCKET, history=5,
                                                        description="CIM pipeline definitions and their paused flags")])
