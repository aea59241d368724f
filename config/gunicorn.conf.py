"""gunicorn settings for lockstep; ``GUNICORN_CMD_ARGS`` and ``WEB_CONCURRENCY`` still apply.

Command-line flags and ``GUNICORN_CMD_ARGS`` override anything set here, as gunicorn
documents; the worker count falls back to ``WEB_CONCURRENCY`` the way gunicorn's own
default does.
"""

import os

wsgi_app = "app.main:create_app"
worker_class = "aiohttp.GunicornWebWorker"
bind = [os.environ.get("LOCKSTEP_BIND", "127.0.0.1:8080")]
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# In-flight requests get this long to finish after SIGTERM before workers are killed.
graceful_timeout = 20
timeout = 30
keepalive = 5
# Access log to stdout; "-" is gunicorn's spelling for it. Silence it with
# GUNICORN_CMD_ARGS="--access-logfile /dev/null" under benchmarks if wanted.
accesslog = "-"
access_log_format = '%a "%r" %s %b %Tf'
errorlog = "-"
loglevel = os.environ.get("LOCKSTEP_LOG_LEVEL", "info")
# gunicorn 27's runtime control socket is not used; without this, two instances on
# one machine would fight over the same socket path.
control_socket_disable = True


def when_ready(server):
    """Warn loudly, once, when the API is open on a non-loopback address."""
    from app.auth import exposure_warning
    from app.settings import Settings

    warning = exposure_warning(server.cfg.address, Settings())
    if warning:
        server.log.warning(warning)
