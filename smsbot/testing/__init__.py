"""The kit flow authors use to test their flows: virtual clock, fake provider, transcripts."""
