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
# pip itself then leaves the venv: the app does not use it, and it is not in the lock.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps --only-binary=:all: \
        -r requirements.txt \
    && /opt/venv/bin/pip uninstall --yes --quiet pip
# What no code here imports, as infra/sam_build.py PRUNED leaves it out of the Lambda layers
# (tests/test_container.py checks both lists agree and every module still imports); then
# what only botocore's documentation reads: its API examples and the prose of its service
# models, emptied (every service still works; half of botocore's size). `rm` without -f: a
# pattern that no longer matches fails the build.
WORKDIR /opt/venv/lib/python3.12/site-packages
RUN rm -r dns dnspython-*.dist-info \
        PIL/_avif.*.so pillow.libs/libavif-* PIL/_imagingft.*.so pillow.libs/libfreetype-* \
        pillow.libs/libharfbuzz-* pillow.libs/libbrotli* pillow.libs/libpng16-* \
        PIL/_imagingcms.*.so pillow.libs/liblcms2-* PIL/_imagingtk.*.so PIL/_imagingmath.*.so \
        PIL/_imagingmorph.*.so \
        aws_lambda_powertools/event_handler aws_lambda_powertools/utilities/auth_alpha \
        aws_lambda_powertools/utilities/circuit_breaker aws_lambda_powertools/utilities/data_masking \
        aws_lambda_powertools/utilities/feature_flags aws_lambda_powertools/utilities/kafka \
        aws_lambda_powertools/utilities/metadata aws_lambda_powertools/utilities/parameters \
        aws_lambda_powertools/utilities/streaming aws_lambda_powertools/utilities/validation \
    && find botocore/data -name examples-1.json -delete \
    && python -c "import gzip, json, pathlib; \
prose = lambda node: {k: '' if k == 'documentation' and isinstance(v, str) else v for k, v in node.items()}; \
[path.write_bytes(gzip.compress(json.dumps(json.loads(gzip.decompress(path.read_bytes()), object_hook=prose), \
separators=(',', ':')).encode(), mtime=0)) for path in pathlib.Path('botocore/data').glob('*/*/service-2.json.gz')]"
WORKDIR /app
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
