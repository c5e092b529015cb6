# One image for every function; shared/entrypoint.py says how it runs:
#   docker run -p 8000:8000 IMAGE                    every function on one port, under /<name>
#   docker run -p 8000:8000 -e FUNCTION=users IMAGE  one function
#   docker run IMAGE worker                          the durable-task worker
#   AWS Lambda (container image)                     the runtime client, handler from FUNCTION or the command

FROM python:3.12-slim-bookworm AS build
WORKDIR /app
COPY requirements.txt ./
# Exactly the lock's export: every package pinned and hash-checked, nothing resolved (--no-deps).
# Wheels only (--only-binary): nothing is compiled, so the build stage needs no compiler either.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps --only-binary=:all: \
        -r requirements.txt
COPY shared/ shared/
COPY functions/ functions/
# Bytecode at build time: the app user cannot write __pycache__ next to root-owned sources.
RUN /opt/venv/bin/python -m compileall -q --invalidation-mode unchecked-hash shared functions

FROM python:3.12-slim-bookworm
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOST=0.0.0.0 \
    PORT=8000 \
    NOTIFICATION_LOG_PATH=/tmp/notifications.log
# /tmp is writable here and on Lambda (read-only elsewhere); /var/lib/app is for a volume the
# app user owns (infra/docker-compose.yml shares the notification log there).
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin app \
    && install -d -o app -g app /var/lib/app
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
WORKDIR /app
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-m", "shared.entrypoint", "healthcheck"]
ENTRYPOINT ["python", "-m", "shared.entrypoint"]
