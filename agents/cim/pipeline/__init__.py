"""The pipeline engine: declarative pipelines of plugin steps over durable consumers."""
