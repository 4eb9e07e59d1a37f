"""The floor: a trivial Flask route served by the same gunicorn configuration."""
from flask import Flask

app = Flask(__name__)


@app.get("/")
def hello():
    return "ok"
