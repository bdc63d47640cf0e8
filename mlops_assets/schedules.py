"""Schedules: the weekly retraining of the change-detection model.

Retraining also follows new data (`mlops_assets.sensors.lakefs`); the schedule retrains on a
fixed rhythm regardless, for example after code or preset changes. It starts STOPPED: turning it
on is a decision for whoever runs the deployment.
"""

from __future__ import annotations

import dagster as dg

from mlops_assets.keys import TAG_TRIGGER
from mlops_assets.sensors.jobs import cd_retrain

SCHEDULE_NAME = "cd_retrain_weekly"
DEFAULT_CRON = "0 3 * * 1"  # Mondays 03:00
DEFAULT_TIMEZONE = "UTC"


def build_cd_retrain_schedule(
    cron_schedule: str = DEFAULT_CRON,
    execution_timezone: str = DEFAULT_TIMEZONE,
    default_status: dg.DefaultScheduleStatus = dg.DefaultScheduleStatus.STOPPED,
    name: str = SCHEDULE_NAME,
) -> dg.ScheduleDefinition:
    """Retrain and register ``cd/model`` on ``cron_schedule`` (in ``execution_timezone``)."""
    return dg.ScheduleDefinition(
        name=name,
        cron_schedule=cron_schedule,
        execution_timezone=execution_timezone,
        target=cd_retrain,
        default_status=default_status,
        tags={TAG_TRIGGER: "schedule"},
        description=(
            f"Retrain cd/model and register it behind the promotion gate ({cron_schedule}, "
            f"{execution_timezone})."
        ),
    )


cd_retrain_weekly = build_cd_retrain_schedule()
