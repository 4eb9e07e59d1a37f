"""How to run keepreading in production: WSGI and Celery entry points, gunicorn settings, env file, systemd units."""
