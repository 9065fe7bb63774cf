"""How every long-running motcua process logs (platform: no Settings here).

- One line per event: a traceback is folded onto its record's line (`` | `` between its
  lines), so a log reads and greps line by line; ``json`` gives one JSON object per line.
- No terminal codes: nothing here colours; faust's spinner is off unless on a terminal
  (streams/worker.py).
- A dead broker does not flood: the client libraries (aiokafka, kafka-python, faust, mode)
  say the same thing many times a second while a broker is down; each kind of their message
  passes once per ``every`` seconds, with the count of those held back. Our own lines (a
  dead letter each) always pass.
- ``on_kafka_trouble`` hears of every Kafka connection error, held back or not: the
  metrics then report the process not ready (infra/metrics.py).
"""

from __future__ import annotations

import json
import logging
import logging.config
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

LIBRARIES = ("aiokafka", "kafka", "faust", "mode")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class Quieter(logging.Filter):
    """Passes each kind of library message (logger, level and template) at most once per
    ``every`` seconds; the next one that passes says how many were held back."""

    def __init__(self, every: float = 30.0,
                 on_kafka_trouble: Callable[[str], None] | None = None) -> None:
        super().__init__()
        self.every = every
        self.on_kafka_trouble = on_kafka_trouble
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(LIBRARIES):
            return True
        if self.on_kafka_trouble is not None and record.levelno >= logging.ERROR \
                and record.name.startswith(("aiokafka", "kafka")):
            self.on_kafka_trouble(record.getMessage())
        key = (record.name, record.levelno, str(record.msg))
        now = time.monotonic()
        last, held = self._seen.get(key, (None, 0))
        if last is not None and now - last < self.every:
            self._seen[key] = (last, held + 1)
            return False
        self._seen[key] = (now, 0)
        if held:
            record.msg = f"{record.msg} [{held} like it held back in {self.every:.0f} s]"
        return True


class OneLine(logging.Formatter):
    """The usual text, with a traceback folded onto the same line."""

    def format(self, record: logging.LogRecord) -> str:
        return " | ".join(line for line in super().format(record).splitlines() if line)


class Json(logging.Formatter):
    """One JSON object per line: time (ISO 8601, UTC), level, logger, pid, message and,
    if any, the exception."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "pid": record.process,
            "message": record.getMessage()}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def logging_config(level: str = "WARNING", fmt: str = "text",
                   on_kafka_trouble: Callable[[str], None] | None = None) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for a motcua process (faust's worker takes it too)."""
    formatter: dict[str, Any] = ({"()": Json} if fmt == "json"
                                 else {"()": OneLine, "fmt": TEXT_FORMAT})
    return {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"motcua": formatter},
        "filters": {"quieter": {"()": Quieter, "on_kafka_trouble": on_kafka_trouble}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr",
                                "formatter": "motcua", "filters": ["quieter"]}},
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        # kafka-python warns about its own slow event-loop turns (noise on a busy machine);
        # its connection errors are ERRORs, and still pass (once per `every` s)
        "loggers": {"kafka": {"level": "CRITICAL" if level.upper() == "CRITICAL"
                              else "ERROR"}},
    }


def setup(level: str = "WARNING", fmt: str = "text",
          on_kafka_trouble: Callable[[str], None] | None = None) -> None:
    logging.config.dictConfig(logging_config(level, fmt, on_kafka_trouble))
