"""Publish/subscribe transports: the interface, MQTT topic rules, and the in-memory broker."""

from .base import Message, Transport, topic_matches, validate_filter, validate_topic
from .memory import ClientStats, InMemoryBroker, InMemoryTransport

__all__ = [
    "ClientStats",
    "InMemoryBroker",
    "InMemoryTransport",
    "Message",
    "Transport",
    "topic_matches",
    "validate_filter",
    "validate_topic",
]
