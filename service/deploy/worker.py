"""The Celery app from any folder: `celery -A service.deploy.worker worker` (and `... beat`)."""
from pathlib import Path

from service import create_app

_app = create_app()
celery = _app.extensions["celery"]
# beat keeps its schedule in the instance folder, not in whatever folder it was started from
celery.conf.beat_schedule_filename = str(Path(_app.instance_path) / "celerybeat-schedule")
