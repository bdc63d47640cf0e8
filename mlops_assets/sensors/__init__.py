"""Sensors: commits on the scene branch and moves of the champion alias launch runs.

`lakefs_commit_sensor` re-materialises the scenes a commit or merge changed and retrains the
change-detection model once per batch; `mlflow_alias_sensor` re-renders the change maps when the
champion moves; `cd_quality_retrain_sensor` retrains when a labelled change map fails its F1
check. All are built by functions (interval, status, names) and come with a default
instance; `mlops_assets.definitions` adds them to the code location.
"""

from mlops_assets.sensors.lakefs import build_lakefs_commit_sensor, lakefs_commit_sensor
from mlops_assets.sensors.mlflow_alias import build_mlflow_alias_sensor, mlflow_alias_sensor
from mlops_assets.sensors.quality import build_quality_retrain_sensor, cd_quality_retrain_sensor

__all__ = [
    "build_lakefs_commit_sensor",
    "lakefs_commit_sensor",
    "build_mlflow_alias_sensor",
    "mlflow_alias_sensor",
    "build_quality_retrain_sensor",
    "cd_quality_retrain_sensor",
]
