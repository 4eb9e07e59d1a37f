"""The WSGI app for gunicorn from any folder: `gunicorn -c python:service.deploy.gunicorn_conf service.deploy.wsgi:app`."""
from service import create_app

app = create_app()
