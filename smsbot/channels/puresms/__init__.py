"""The legacy PureSMS v1 API: its client, batched receipts format and status map."""
