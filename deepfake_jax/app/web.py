"""The app's web side: a small Flask app with server-rendered HTML (no JavaScript framework).

    /                      upload form (several images, optional face crop)
    /predict (POST)        the same page with one result card per file
    /models                each run's config summary, evaluation metrics and plots
    /runs/<i>/eval/<png>   a plot written by the evaluate command (or the trainer)
    /healthz               JSON: the server is up and its models are loaded

Every failure a user can cause (a corrupt file, not an image, no face, too large an upload)
renders as a message in the page with the request's other results; an unexpected exception is
logged with its traceback on the server and shown as one readable line, and the server keeps
serving.
"""

from __future__ import annotations

import math
import os
import threading
from typing import Any

from absl import logging
from flask import Flask, abort, jsonify, render_template, request, send_from_directory
from jinja2 import DictLoader
from markupsafe import escape
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from deepfake_jax.app import analysis
from deepfake_jax.app.loaded_runs import METRIC_KEYS

_LAYOUT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>deepfake_jax{{ ' - ' + title if title }}</title>
<style>
 body { font-family: system-ui, sans-serif; margin: 0 2em 2em; color: #222; }
 nav { padding: .8em 0; border-bottom: 1px solid #ccc; margin-bottom: 1em; }
 nav a { margin-right: 1.5em; font-weight: 600; }
 table { border-collapse: collapse; margin: .5em 0; }
 table.regions { font-size: .8em; margin: 0; }
 td, th { border: 1px solid #ddd; padding: .25em .6em; text-align: left; }
 .error { color: #a00; background: #fee; padding: .5em; border-left: 4px solid #a00; }
 .note { color: #555; font-size: .9em; }
 .result { border: 1px solid #ccc; border-radius: 6px; padding: .6em 1em; margin: 1em 0; }
 .fake { color: #a00; font-weight: 700; } .real { color: #070; font-weight: 700; }
 figure { display: inline-block; margin: .3em 1em .3em 0; vertical-align: top; }
 figcaption { font-size: .8em; color: #555; max-width: 260px; }
 img.pixels { image-rendering: pixelated; }
 img.plot { max-width: 420px; border: 1px solid #eee; }
</style></head><body>
<nav><a href="/">Upload</a><a href="/models">Models</a>
 <span class="note">{{ runs|length }} model(s): {{ runs|map(attribute='name')|join(', ') }}</span>
</nav>
{% block body %}{% endblock %}
</body></html>"""

_INDEX = """{% extends "layout.html" %}{% block body %}
<h1>Is this face real or generated?</h1>
<form method="post" action="/predict" enctype="multipart/form-data" id="upload-form">
 <p><input type="file" id="images" name="images" multiple accept="{{ accept }}"></p>
 <p><label><input type="checkbox" id="face_crop" name="face_crop" value="1"
   {{ 'checked' if face_crop }}> crop the largest face first (OpenCV Haar cascade)</label></p>
 <p><button type="submit" id="submit">Score</button>
  <span class="note">jpg, png or webp; at most {{ max_upload_mb }} MB per upload and
  {{ max_megapixels }} megapixels per image</span></p>
</form>
<p id="client-error" class="error" hidden></p>
<script>
 // Refuse an oversized upload before sending it (the server refuses it too, with a message).
 document.getElementById('upload-form').addEventListener('submit', function (ev) {
   var total = 0, files = document.getElementById('images').files;
   for (var i = 0; i < files.length; i++) total += files[i].size;
   var box = document.getElementById('client-error');
   if (total > {{ max_upload_bytes }}) {
     ev.preventDefault();
     box.textContent = 'The selected files total ' + (total / 1048576).toFixed(1) +
       ' MB; the limit is {{ max_upload_mb }} MB per upload.';
     box.hidden = false;
   }
 });
</script>
{% if message %}<p class="error" id="page-error">{{ message }}</p>{% endif %}
{% for res in results %}
<section class="result" data-status="{{ 'ok' if res.ok else 'error' }}">
 <h3>{{ res.filename }}</h3>
 {% if not res.ok %}
  <p class="error">Could not score this file: {{ res.error }}</p>
 {% else %}
  <table><tr><th>model</th><th>p_fake</th><th>label</th><th>threshold</th></tr>
  {% for s in res.scores %}
   <tr><td>{{ s.run }}</td>{% if s.error %}<td colspan="2" class="error">{{ s.error }}</td>
    {% else %}<td class="p-fake">{{ '%.4f' % s.p_fake }}</td>
    <td class="{{ s.label }}">{{ s.label }}</td>{% endif %}
    <td>{{ '%.4f' % s.threshold }}</td></tr>
  {% endfor %}</table>
  {% for note in res.notes %}<p class="warning note">Warning: {{ note }}</p>{% endfor %}
  {% if res.face_box %}<p class="note">face box (x, y, w, h):
   {{ res.face_box|join(', ') }}</p>{% endif %}
  {% for pic in res.pictures %}
   <figure><img class="pixels" src="{{ pic.data_uri }}" alt="{{ pic.caption }}">
    <figcaption>{{ pic.caption }}</figcaption></figure>
  {% endfor %}
  {% for reg in res.regions %}
   <figure><table class="regions"><tr><th>region</th><th>heat share</th><th>area share</th></tr>
   {% for name, heat, area in reg.shares %}
    <tr><td>{{ name }}</td><td>{{ '%.1f%%' % (100 * heat) }}</td>
     <td>{{ '%.1f%%' % (100 * area) }}</td></tr>
   {% endfor %}</table>
   <figcaption>{{ reg.run }}: share of the heatmap on each face region, and of the
    pixels</figcaption></figure>
  {% endfor %}
 {% endif %}
</section>
{% endfor %}
{% for note in notes %}<p class="note">{{ note }}</p>{% endfor %}
{% endblock %}"""

_MODELS = """{% extends "layout.html" %}{% block body %}
<h1>Models</h1>
{% for run in runs %}{% set i = loop.index0 %}
<section class="model">
 <h2>{{ run.name }}</h2>
 <table>{% for key, value in run.summary() %}<tr><th>{{ key }}</th><td>{{ value }}</td></tr>
 {% endfor %}</table>
 {% set reports = run.reports() %}
 {% if not reports %}
  <p class="note">No evaluation under {{ run.workdir }}/eval yet: run
  <code>python -m deepfake_jax.evaluate --workdir {{ run.workdir }}</code>.</p>
 {% endif %}
 {% for rep in reports %}
  <h3>evaluation: {{ rep.name }}</h3>
  {% if rep.error %}<p class="error">{{ rep.error }}</p>{% endif %}
  <table class="metrics">{% for key, value in metric_rows(rep.metrics) %}
   <tr><th>{{ key }}</th><td>{{ value }}</td></tr>{% endfor %}</table>
  {% for plot in rep.plots %}
   <img class="plot" src="/runs/{{ i }}/eval/{{ plot }}" alt="{{ plot }}">
  {% endfor %}
 {% endfor %}
</section>
{% endfor %}
{% if parsing %}<section class="model"><h2>face parsing: {{ parsing.workdir }}</h2></section>
{% endif %}
{% for note in notes %}<p class="note">{{ note }}</p>{% endfor %}
{% endblock %}"""


def metric_rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """The scalar metrics of METRIC_KEYS that a metrics.json has, formatted for the page."""
    rows = []
    for key in METRIC_KEYS:
        value = metrics.get(key)
        if isinstance(value, bool) or isinstance(value, (int, str)):
            rows.append((key, str(value)))
        elif isinstance(value, float):
            rows.append((key, "nan" if math.isnan(value) else f"{value:.4f}"))
    return rows


def create_app(runs: list, *, parsing=None, notes: list[str] | None = None,
               max_upload_mb: float = 32, max_megapixels: float = 40) -> Flask:
    """The Flask app over already loaded `runs` (LoadedRun) and optional `parsing`
    (FaceParsing). `notes`: lines about what is not available (shown on every page)."""
    if not runs:
        raise ValueError("the app needs at least one loaded run")
    app = Flask("deepfake_jax.app")
    app.jinja_loader = DictLoader({"layout.html": _LAYOUT, "index.html": _INDEX,
                                   "models.html": _MODELS})
    app.config["MAX_CONTENT_LENGTH"] = int(max_upload_mb * 1024 * 1024)
    notes = list(notes or [])
    lock = threading.Lock()  # one request on the devices at a time

    def page(template: str, status: int = 200, **kw):
        html = render_template(
            template, runs=runs, notes=notes, parsing=parsing,
            accept=",".join(analysis.ALLOWED_EXTENSIONS), max_upload_mb=f"{max_upload_mb:g}",
            max_upload_bytes=app.config["MAX_CONTENT_LENGTH"],
            max_megapixels=f"{max_megapixels:g}", metric_rows=metric_rows, **kw)
        return html, status

    def index_page(status: int = 200, **kw):
        kw.setdefault("results", [])
        kw.setdefault("message", "")
        kw.setdefault("face_crop", False)
        return page("index.html", status, title="upload", **kw)

    @app.get("/")
    def index():
        return index_page()

    @app.post("/predict")
    def predict():
        face_crop = request.form.get("face_crop") == "1"
        uploads = [analysis.Upload(f.filename or "", f.read())
                   for f in request.files.getlist("images") if f.filename or f.content_length]
        if not uploads:
            return index_page(400, message="Choose at least one image file to score.",
                              face_crop=face_crop)
        with lock:
            results = analysis.analyse(uploads, runs, face_crop=face_crop, parser=parsing,
                                       max_pixels=int(max_megapixels * 1e6))
        scored = sum(r.ok for r in results)
        logging.info("scored %d of %d uploaded file(s)", scored, len(results))
        return index_page(results=results, face_crop=face_crop)

    @app.get("/models")
    def models():
        return page("models.html", title="models")

    @app.get("/runs/<int:index>/eval/<path:name>")
    def eval_plot(index: int, name: str):
        if not 0 <= index < len(runs) or not name.endswith(".png"):
            abort(404)
        # send_from_directory refuses paths that leave the folder (.., absolute paths).
        return send_from_directory(os.path.join(runs[index].workdir, "eval"), name)

    @app.get("/healthz")
    def healthz():
        return jsonify(status="ok", runs=[r.name for r in runs],
                       face_parsing=parsing is not None)

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_e):
        return index_page(413, message=f"The upload is larger than the limit of "
                                       f"{max_upload_mb:g} MB: send fewer or smaller files "
                                       f"(the server's --max_upload_mb sets the limit).")

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException):
        return index_page(e.code or 500, message=f"{e.code} {e.name}: {e.description}")

    @app.errorhandler(Exception)
    def unexpected(e: Exception):
        logging.exception("request %s %s failed", request.method, request.path)
        message = (f"Something went wrong on the server ({type(e).__name__}: {e}). The app "
                   f"keeps running; the details are in its log.")
        try:
            return index_page(500, message=message)
        except Exception:  # noqa: BLE001 - the page itself failed: plain HTML, still no trace
            logging.exception("rendering the error page failed")
            return f'<p class="error" id="page-error">{escape(message)}</p>', 500

    return app
