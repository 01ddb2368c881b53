"""Logging setup: text or JSON lines. Log messages carry counts and hashed lead keys only."""

from __future__ import annotations

import json
import logging
import sys
import time

from worker.settings import Settings


class JsonFormatter(logging.Formatter):
    """One JSON object per line. Extra record attributes are not emitted: Celery puts
    task arguments there."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exc_type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
            # The whole chain, causes included: the error tree's messages carry codes and
            # counts, never lead values or secrets.
            line["traceback"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False)


def configure_logging(settings: Settings, also: tuple[str, ...] = ()) -> None:
    """Attach one handler to the ``worker``, ``producers`` and ``marketo_sim`` loggers
    (and to the loggers named in ``also``)."""
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("worker", "producers", "marketo_sim", *also):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(settings.log_level.upper())
        logger.propagate = False
