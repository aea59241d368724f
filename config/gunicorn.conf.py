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


def post_worker_init(worker: object) -> None:
    """Keep a worker alive when a write hits the file-size limit (RLIMIT_FSIZE).

    The kernel signals SIGXFSZ, whose default action kills the process; ignored, the write
    fails with EFBIG instead, SQLite reports an I/O error and the request answers 503.
    Python ignores it at startup already; this keeps it so whatever ran in between.
    """
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
