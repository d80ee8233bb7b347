"""``--log-format text|json``: the same log records, as today's text lines or as one JSON
object per line.

Structured values (``project``, ``reason``, ``kid``, ``request_id``, ``event`` ...) travel
in the record through ``extra=``; the text format shows only the message (which already
carries them), the JSON format adds each as its own field. No caller ever passes a token.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Final, TextIO

__all__ = ["LOG_FORMATS", "TEXT_FORMAT", "JsonFormatter", "configure_logging"]

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_FORMATS: Final = ("text", "json")

# Every attribute a plain LogRecord has; anything else came in through ``extra=``.
_STANDARD: Final = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys()
    | {"message", "asctime", "taskName"}
)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time``, ``level``, ``logger``, ``message``, then the
    ``extra=`` fields, ``pid`` when asked, and ``exception`` for a traceback."""

    def __init__(self, *, with_pid: bool = False) -> None:
        super().__init__()
        self._with_pid = with_pid

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self._with_pid:
            entry["pid"] = record.process
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=True)


def configure_logging(
    level: str, log_format: str = "text", *, with_pid: bool = False, stream: TextIO | None = None
) -> None:
    """Configure the root logger once for a serving process (stderr by default)."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(with_pid=with_pid))
    else:
        fmt = TEXT_FORMAT.replace("%(name)s", "[%(process)d] %(name)s") if with_pid else TEXT_FORMAT
        handler.setFormatter(logging.Formatter(fmt))
    logging.basicConfig(level=level, handlers=[handler])
