"""The durable pipeline: inbox, dispatcher, effects, outbox sender, receipts and timers.

It stores every accepted event, steps each conversation one event at a time through the engine,
writes the result in one transaction, sends replies and applies delivery receipts.
"""
