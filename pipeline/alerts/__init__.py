"""Alert delivery: routing, escalation, acknowledgement and the channels (docs/alerts.md)."""
