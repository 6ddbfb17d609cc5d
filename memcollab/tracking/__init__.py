"""MLflow tracking of runs, programs and transfer matrices."""

from memcollab.tracking.mlflow_tracking import Tracker, default_tracking_uri

__all__ = ["Tracker", "default_tracking_uri"]
