"""`python -m smsbot` runs the CLI."""

import sys

from smsbot.cli import main

sys.exit(main())
