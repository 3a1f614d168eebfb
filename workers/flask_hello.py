"""The smallest Flask app (WSGI), for the benchmark and the WSGI docs."""

from flask import Flask

app = Flask(__name__)


@app.get("/")
def hello() -> str:
    return "Hello, world!\n"
