"""Deployment files shipped with the package: the gunicorn settings."""
