# smsbot: one image for `smsbot serve` (and its built-in sandbox, for local set-ups).
FROM python:3.11-slim

# The image's user cannot write /app, so state lives in /data: the default SQLite database and,
# with the sandbox provider, the development operator key beside it. Mount a volume there.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    SMSBOT_DATABASE_URL=sqlite:////data/smsbot.db
WORKDIR /app

COPY pyproject.toml README.md ./
COPY smsbot ./smsbot
RUN pip install --no-cache-dir .

# The user's side: flows and templates (mount your own over these).
COPY flows ./flows
COPY templates ./templates

RUN useradd --system --uid 10001 --no-create-home smsbot \
    && mkdir /data && chown smsbot /data
VOLUME /data
USER smsbot

EXPOSE 8080
# start-period: the first start migrates the schema before /healthz answers.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz').status != 200)"
# Migrations run at start-up: on PostgreSQL under an advisory lock, so replicas starting together
# take turns and the later ones find nothing to do. Run `smsbot db upgrade` as a release step
# instead if you prefer.
CMD ["smsbot", "serve", "--host", "0.0.0.0"]
