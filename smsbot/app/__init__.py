"""The entry points: the CLI, `smsbot serve`, the HTTP server, operator API, chat, bulk starts."""
