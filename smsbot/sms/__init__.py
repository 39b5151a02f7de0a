"""SMS rules shared by every layer: phone numbers, text encoding and segments, templates,
keywords and the delivery-status vocabulary."""
