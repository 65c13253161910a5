"""UTC day windows of the daily partitions, and µs conversions for rows.

Partition keys are ISO dates (``"2026-08-17"``); the day is the half-open UTC window
``[00:00, next 00:00)``.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta


def day_window(day: str | date) -> tuple[datetime, datetime]:
    """``(start, end)`` of the UTC day as aware datetimes; ``end`` is exclusive.

    Raises:
        ValueError: ``day`` is not an ISO date.
    """
    d = date.fromisoformat(day) if isinstance(day, str) else day
    start = datetime.combine(d, time(0), tzinfo=UTC)
    return start, start + timedelta(days=1)


def utcnow() -> datetime:
    """The current time, aware UTC."""
    return datetime.now(UTC)


def to_us(dt: datetime) -> int:
    """Aware datetime -> µs since the Unix epoch (the row format of ``collector_daemon.rows``)."""
    return int((dt - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1))


def from_us(us: int) -> datetime:
    """µs since the Unix epoch -> aware UTC datetime."""
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)
