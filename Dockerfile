# One image for the three services; the argument picks one (see local/commands.py):
#   docker run IMAGE            -> enqueue (gunicorn, port 8080)
#   docker run IMAGE status     -> status  (gunicorn, port 8081)
#   docker run IMAGE worker     -> worker  (python -m worker_fn)
# Every setting is an environment variable named after a field of taskbus.settings.Settings.
FROM python:3.11-slim

ENV HOST=0.0.0.0 PYTHONUNBUFFERED=1 PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first: this layer is rebuilt only when requirements.txt changes.
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

# The source stays owned by root: the service user can read it but not change it.
COPY . .

RUN useradd --system --uid 10001 --user-group --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin taskbus
USER taskbus

EXPOSE 8080 8081

# gunicorn drains for 8 s and the worker for GRACE_S (8 s) after SIGTERM.
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "local.serve"]
CMD ["enqueue"]
