# One lean image for the four services: the `taskbus` package and its runtime dependencies only
# (no embedded servers, tests or dev tools), run as a non-root user. The command picks the service:
#   docker run IMAGE                   -> taskbus serve enqueue  (gunicorn, ENQUEUE_PORT 8080 or PORT)
#   docker run IMAGE serve status      -> taskbus serve status   (gunicorn, STATUS_PORT 8081 or PORT)
#   docker run IMAGE serve console     -> taskbus serve console  (gunicorn, CONSOLE_PORT 8082 or PORT;
#                                         needs ADMIN_KEYS or ADMIN_KEYS_FILE, or CONSOLE_READ_ONLY=true)
#   docker run IMAGE worker            -> taskbus worker         (GET /healthz on PORT when set)
# Every setting is an environment variable named after a field of taskbus.settings.Settings.

# --- build: the wheel of this checkout (only the package's own files reach this stage) ----------
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY taskbus taskbus
COPY worker_fn worker_fn
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --- the image ------------------------------------------------------------------------------
FROM python:3.11-slim

ENV HOST=0.0.0.0 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first: this layer is rebuilt only when the runtime pins change.
COPY requirements-runtime.txt .
RUN pip install --no-cache-dir -r requirements-runtime.txt

# The package itself (its dependencies are installed above, at the same pins).
COPY --from=build /wheels /tmp/wheels
RUN pip install --no-cache-dir --no-deps /tmp/wheels/*.whl && rm -rf /tmp/wheels

# Installed as root, run as a service user that can read the package but not change it.
# /app is the working directory: a derived image adds its handlers there (HANDLERS=myapp.tasks).
RUN useradd --system --uid 10001 --user-group --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin taskbus
USER taskbus

EXPOSE 8080 8081 8082

# gunicorn drains for 8 s and the worker for GRACE_S (8 s) after SIGTERM.
STOPSIGNAL SIGTERM
ENTRYPOINT ["taskbus"]
CMD ["serve", "enqueue"]
