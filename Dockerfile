# lockstep: gunicorn + aiohttp workers, SQLite on the /data volume.
#   docker compose up    then    curl localhost:8080/access
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LOCKSTEP_DATA_DIR=/data \
    LOCKSTEP_BIND=0.0.0.0:8080

WORKDIR /srv/lockstep

# Dependencies get a layer of their own, built from pyproject.toml alone, so editing the
# source (or the README) does not reinstall them. The build backend comes along, so the
# project itself installs below without reaching the package index again.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb')); print('\n'.join(p['build-system']['requires'] + p['project']['dependencies']))" > /tmp/requirements.txt \
 && pip install --no-cache-dir -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# The volume directory is created and owned by the service user before VOLUME, so a fresh
# named volume starts out writable by it.
RUN groupadd --system --gid 10001 lockstep \
 && useradd --system --no-log-init --uid 10001 --gid 10001 --no-create-home lockstep \
 && mkdir /data \
 && chown 10001:10001 /data
VOLUME ["/data"]

COPY app/ app/
COPY config/ config/
# The `lockstep` command (tokens: `docker compose exec lockstep lockstep token ...`), as an
# editable install: it runs the same app/ that gunicorn imports.
RUN pip install --no-cache-dir --no-deps --no-build-isolation --editable .

# Numeric, so the runtime can check it is not root without reading /etc/passwd.
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=2)"]
# The bind address comes from LOCKSTEP_BIND above (read by the config file) rather than a
# --bind flag, so GUNICORN_CMD_ARGS and WEB_CONCURRENCY still work as gunicorn documents.
CMD ["gunicorn", "--config", "config/gunicorn.conf.py"]
