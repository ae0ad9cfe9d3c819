"""Ingestion: the MQTT bridge and the camera hooks put everything devices and cameras send into Kafka,
validated and enriched from the registry, or into the dead-letter topic with the reason (docs/ingest.md)."""
