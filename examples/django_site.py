"""A small, real Django site in one file: the admin, sessions, templates, an sqlite database.

Used by ``benchmarks/gunicorn_django.py`` and the gunicorn integration tests to see what a web
app's first requests leave in each worker. Settings come from the environment:

- ``FORKMEM_DJANGO_DB``: the sqlite file (default ``django_site.sqlite3`` next to this file).
- ``FORKMEM_DJANGO_DEBUG=1``: Django's debug mode (off by default, as in production).

Set up the database once, then serve it::

    python examples/django_site.py migrate
    gunicorn --preload --workers 4 django_site:application    # from examples/

Pages: ``/`` (a template listing the users), ``/admin/`` (Django's admin; ``/admin/login/``
renders without a session), ``/memory`` (the worker's own memory as JSON; ``?hold=0.5`` keeps
it busy for that long, so concurrent requests reach different sync workers).
"""

from __future__ import annotations

import gc
import os
import sys
import time
from pathlib import Path

import django
from django.conf import settings

HERE = Path(__file__).resolve().parent

settings.configure(
    DEBUG=os.environ.get("FORKMEM_DJANGO_DEBUG") == "1",
    SECRET_KEY="forkmem-example-only-not-secret",  # an example site on 127.0.0.1
    ALLOWED_HOSTS=["127.0.0.1", "localhost"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=[
        "django.contrib.admin",
        "django.contrib.auth",
        "django.contrib.contenttypes",
        "django.contrib.sessions",
        "django.contrib.messages",
        "django.contrib.staticfiles",
    ],
    MIDDLEWARE=[
        "django.middleware.security.SecurityMiddleware",
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.middleware.common.CommonMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "django.contrib.messages.middleware.MessageMiddleware",
        "django.middleware.clickjacking.XFrameOptionsMiddleware",
    ],
    TEMPLATES=[
        {
            "BACKEND": "django.template.backends.django.DjangoTemplates",
            "DIRS": [],
            "APP_DIRS": True,
            "OPTIONS": {
                "context_processors": [
                    "django.template.context_processors.request",
                    "django.contrib.auth.context_processors.auth",
                    "django.contrib.messages.context_processors.messages",
                ],
            },
        }
    ],
    DATABASES={
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("FORKMEM_DJANGO_DB", str(HERE / "django_site.sqlite3")),
        }
    },
    STATIC_URL="/static/",
    USE_TZ=True,
    USE_I18N=True,
    DEFAULT_AUTO_FIELD="django.db.models.AutoField",
)
django.setup()

from django.contrib import admin  # noqa: E402  (needs the settings above)
from django.contrib.auth.models import User  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import HttpRequest, HttpResponse, JsonResponse  # noqa: E402
from django.template import engines  # noqa: E402
from django.urls import path  # noqa: E402

_INDEX = """<!doctype html>
<html><head><title>{{ title }}</title></head>
<body><h1>{{ title }}</h1>
<p>{{ users|length }} user{{ users|length|pluralize }}, rendered {% now "DATETIME_FORMAT" %}.</p>
<ul>{% for user in users %}<li>{{ user.username|title }} ({{ user.date_joined|date:"Y-m-d" }})</li>
{% empty %}<li>nobody yet</li>{% endfor %}</ul>
<p><a href="{% url 'admin:index' %}">admin</a></p>
</body></html>
"""


def index(request: HttpRequest) -> HttpResponse:
    """A template over a database query: what most Django pages are."""
    template = engines["django"].from_string(_INDEX)
    users = list(User.objects.order_by("username")[:20])
    return HttpResponse(template.render({"title": "forkmem example", "users": users}, request))


def memory(request: HttpRequest) -> HttpResponse:
    """This worker's memory (after a collection) as JSON."""
    import forkmem

    gc.collect()
    usage = forkmem.memory()
    payload = {"pid": os.getpid(), "uss": usage.uss, "pss": usage.pss, "rss": usage.rss}
    try:
        hold = min(max(float(request.GET.get("hold", "0")), 0.0), 2.0)
    except ValueError:
        return HttpResponse("hold must be a number of seconds\n", status=400)
    time.sleep(hold)
    return JsonResponse(payload)


urlpatterns = [
    path("", index),
    path("memory", memory),
    path("admin/", admin.site.urls),
]

application = get_wsgi_application()


def _migrate() -> None:
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    for i in range(10):
        User.objects.get_or_create(username=f"user{i:02d}", defaults={"email": f"u{i}@example.org"})


if __name__ == "__main__":
    if sys.argv[1:] != ["migrate"]:
        sys.exit("usage: python django_site.py migrate")
    _migrate()
