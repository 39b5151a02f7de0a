"""`python -m smsbot` runs the CLI."""

import sys

from smsbot.app.cli import main

sys.exit(main())
