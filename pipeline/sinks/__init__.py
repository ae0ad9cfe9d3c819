"""Sinks: Kafka topics into InfluxDB (docs/alerts.md has the schema)."""
