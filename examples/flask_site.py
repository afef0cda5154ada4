"""A small, real Flask app: Jinja templates, JSON, a blueprint; for the gunicorn benchmarks.

Serve it from ``examples/``: ``gunicorn --preload --workers 4 flask_site:app``. Pages: ``/``
(a template), ``/api/items`` (JSON), ``/memory`` (the worker's own memory as JSON; ``?hold=0.5``
keeps it busy for that long, so concurrent requests reach different sync workers).
"""

from __future__ import annotations

import gc
import os
import time

from flask import Blueprint, Flask, jsonify, render_template_string, request

_PAGE = """<!doctype html>
<html><head><title>{{ title }}</title></head>
<body><h1>{{ title|title }}</h1>
<ul>{% for item in items %}
<li>{{ loop.index }}. {{ item.name|e }}: {{ "%.2f"|format(item.price) }}</li>
{% endfor %}</ul>
<p><a href="{{ url_for('api.items') }}">as JSON</a></p>
</body></html>
"""

ITEMS = [{"name": f"item {i}", "price": i * 1.25} for i in range(20)]

api = Blueprint("api", __name__, url_prefix="/api")


@api.get("/items")
def items() -> object:
    """The items as JSON."""
    return jsonify(items=ITEMS, count=len(ITEMS))


app = Flask(__name__)
app.register_blueprint(api)


@app.get("/")
def index() -> str:
    """A rendered template."""
    return render_template_string(_PAGE, title="forkmem example", items=ITEMS)


@app.get("/memory")
def memory() -> object:
    """This worker's memory (after a collection) as JSON."""
    import forkmem

    gc.collect()
    usage = forkmem.memory()
    try:
        hold = min(max(float(request.args.get("hold", "0")), 0.0), 2.0)
    except ValueError:
        return "hold must be a number of seconds\n", 400
    time.sleep(hold)
    return jsonify(pid=os.getpid(), uss=usage.uss, pss=usage.pss, rss=usage.rss)
