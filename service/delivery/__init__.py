"""Outbound fan-out: the outbox dispatcher, the signed HTTP sender and the retry policy."""
