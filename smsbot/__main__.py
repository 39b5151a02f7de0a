"""`python -m smsbot` runs the CLI."""

import sys

from smsbot.app.cli import main

if __name__ == "__main__":  # not when a spawned process imports it (app/bulk_jobs)
    sys.exit(main())
