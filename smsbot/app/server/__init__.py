"""The aiohttp application: webhook intake, health, metrics and the operator API."""
