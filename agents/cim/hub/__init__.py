"""The integration hub: HTTP ingest, outbound webhooks, and connectors (inbox folder, S3 import)."""
