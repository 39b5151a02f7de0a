"""smsbot's webhook intake alone: the real app and inbox writer, no dispatcher, sender or timers.

    python -m bench.intake_only        (reads the same SMSBOT_* settings as `smsbot serve`)

Built from smsbot's public pieces only (`create_app(bot, run_workers=False)`), so it changes no
smsbot code: it shows what intake costs when nothing else competes for the process.
"""

from __future__ import annotations

from aiohttp import web

from smsbot.app.assembly import build_provider
from smsbot.app.heap import settle_heap
from smsbot.app.server.app import create_app
from smsbot.config import Settings
from smsbot.engine.contract import EchoHandler
from smsbot.pipeline.bot import Bot
from smsbot.store.migrate import upgrade


def main() -> None:
    settings = Settings.from_env()
    upgrade(settings.sync_database_url)
    bot = Bot(settings, provider=build_provider(settings), handler=EchoHandler())
    app = create_app(bot, run_workers=False)
    settle_heap()  # as `smsbot serve` does once loaded
    web.run_app(app, host="127.0.0.1", port=settings.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
