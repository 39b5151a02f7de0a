"""Divergent Connect: its API client, webhook format, signature scheme and status map."""
