"""Larder: an event-streaming pipeline for food-safety sensor data."""

__version__ = "0.1.0"
