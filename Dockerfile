# smsbot: one image for `smsbot serve` (and the sandbox, for local set-ups).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY smsbot ./smsbot
RUN pip install --no-cache-dir .

# The user's side: flows and templates (mount your own over these).
COPY flows ./flows
COPY templates ./templates

RUN useradd --system --uid 10001 smsbot
USER smsbot

EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz').status != 200)"
# Migrations run at start-up; with several replicas Alembic's own lock-free upgrade is
# idempotent, but run `smsbot db upgrade` as a release step if you prefer.
CMD ["smsbot", "serve", "--host", "0.0.0.0"]
