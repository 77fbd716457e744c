"""The maintenance window: when a reboot may start, in the controller's local time.

``window: {start: "01:00", end: "05:00"}``; a window whose end is not after its start crosses
midnight (``22:00`` to ``02:00``). Only the start of a reboot is bound by it: a machine rebooted
at 04:59 is still verified after 05:00, and the update and deploy steps run whenever the run
does. A run that reaches a reboot outside the window is paused (a persisted state) and the
next ``orchestrator run`` or ``resume`` inside the window continues it.

Every answer is computed from the wall clock at the moment it is asked, never from a duration
measured since the pause: a clock stepped by NTP (or a controller that slept) changes *when*
the run goes on, never *which* machine is next — that is in the store.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from datetime import time as clock


@dataclass(frozen=True)
class Window:
    start: clock
    end: clock

    @property
    def crosses_midnight(self) -> bool:
        return self.end <= self.start

    def contains(self, moment: datetime) -> bool:
        """Whether ``moment`` (its local wall-clock time) is inside the window."""
        now = moment.time().replace(tzinfo=None)
        if self.crosses_midnight:
            return now >= self.start or now < self.end
        return self.start <= now < self.end

    def next_start(self, moment: datetime) -> datetime:
        """The next time the window opens after ``moment``, as an aware local datetime
        (today's start if it is still ahead, else tomorrow's), DST-correct."""
        today = moment.date()
        start_today = _local(today, self.start)
        return (
            start_today if start_today > moment else _local(today + timedelta(days=1), self.start)
        )

    def describe(self) -> str:
        return f"{_hhmm(self.start)}-{_hhmm(self.end)}"


def _hhmm(value: clock) -> str:
    return value.strftime("%H:%M:%S" if value.second else "%H:%M")


def _local(day: date, at: clock) -> datetime:
    """``day`` at ``at`` in the local time zone, as the wall clock will show it: mktime
    resolves the zone's offset on that day (a DST change between now and then included)."""
    naive = datetime.combine(day, at.replace(tzinfo=None))
    return datetime.fromtimestamp(time.mktime(naive.timetuple())).astimezone()


def local_now() -> datetime:
    return datetime.now().astimezone()


def paused_line(window: Window, moment: datetime) -> str:
    """``paused until 01:00 (next window)``: what `run` says when it pauses."""
    return f"paused until {_hhmm(window.next_start(moment).time())} (next window)"
