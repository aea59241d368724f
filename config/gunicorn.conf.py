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
# Access log to stdout ("-"), a file path, or off when LOCKSTEP_ACCESS_LOG is set empty
# (gunicorn's own flags cannot switch it off once set here).
accesslog = os.environ.get("LOCKSTEP_ACCESS_LOG", "-") or None
access_log_format = '%a "%r" %s %b %Tf'
errorlog = "-"
loglevel = os.environ.get("LOCKSTEP_LOG_LEVEL", "info")
# gunicorn 27's runtime control socket is not used; without this, two instances on
# one machine would fight over the same socket path.
control_socket_disable = True
