"""A Flask app as people write them: JSON, uploads, streaming, send_file, errors."""

from __future__ import annotations

import hashlib
import os

from flask import Flask, Response, jsonify, request, send_file, stream_with_context

app = Flask(__name__)


@app.get("/")
def index():
    return jsonify(framework="flask", pid=os.getpid())


@app.post("/json")
def post_json():
    data = request.get_json()
    return jsonify(received=data, doubled=[x * 2 for x in data["numbers"]])


@app.post("/upload")
def upload():
    stored = request.files["file"]
    digest = hashlib.sha256(stored.read()).hexdigest()
    return jsonify(name=request.form["name"], filename=stored.filename, sha256=digest)


@app.get("/stream")
def stream():
    def generate():
        for i in range(4):
            yield f"line {i}\n"

    return Response(stream_with_context(generate()), mimetype="text/plain")


@app.get("/big")
def big():
    return send_file(os.environ["FLASK_BIG_FILE"], mimetype="application/octet-stream")


@app.get("/fail")
def fail():
    raise RuntimeError("the view failed on purpose")
