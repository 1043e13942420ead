"""The names of CIM's streams and buckets, in one leaf module every layer may import (the
permissions in capabilities.json spell the same names)."""

from __future__ import annotations

EVENTS_STREAM = "CIM_EVENTS"  # subjects cim.evt.<aggregate>.<id>.<event>
DLQ_STREAM = "CIM_DLQ"  # subjects cim.dlq.>
CONTENT_BUCKET = "CIM_CONTENT"  # object bucket: stream OBJ_CIM_CONTENT
REGISTRY_BUCKET = "CIM_REGISTRY"  # KV: the agents' records
PIPELINES_BUCKET = "CIM_PIPELINES"  # KV: one key per pipeline
HUB_BUCKET = "CIM_HUB"  # KV: the hub connectors' state
TIER_ACCESS_BUCKET = "CIM_TIER_ACCESS"  # KV: last reads, for the tier's `idle` policies
