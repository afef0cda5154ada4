"""A small, real Flask site: a blog on the SQLAlchemy ORM (Flask-SQLAlchemy, sqlite), file
templates with inheritance and macros, a Flask-WTF form with CSRF in the session, flashed
messages, two blueprints. Used by ``benchmarks/gunicorn_django.py --app flask`` and the gunicorn
integration tests to see what a Flask app's first requests leave in each worker.

The site makes its own database when it is imported: ``FORKMEM_FLASK_DB`` names the sqlite file
(created and filled if it has no tables yet), else a fresh one in a temporary folder that the
process that made it removes at exit. Serve it from ``examples/`` with ``--preload``, so that one
process makes the database::

    gunicorn --preload --workers 4 flask_site:app

Pages: ``/`` and ``/?page=2`` (posts, newest first), ``/posts/<slug>`` (a post, its comments and
a comment form; POST adds a comment), ``/tags/<name>``, ``/api/posts`` (JSON), ``/memory`` (the
worker's own memory as JSON; ``?hold=0.5`` keeps it busy for that long, so concurrent requests
reach different sync workers).
"""

from __future__ import annotations

import atexit
import datetime as dt
import gc
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from flask import (
    Blueprint,
    Flask,
    abort,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_sqlalchemy import SQLAlchemy
from flask_wtf import FlaskForm
from sqlalchemy import Column, ForeignKey, String, Table, Text, func, inspect, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, selectinload
from wtforms import StringField, TextAreaField
from wtforms.validators import DataRequired, Length

HERE = Path(__file__).resolve().parent
PER_PAGE = 10


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)

post_tags = Table(
    "post_tags",
    Base.metadata,
    Column("post_id", ForeignKey("post.id"), primary_key=True),
    Column("tag_id", ForeignKey("tag.id"), primary_key=True),
)


class Author(db.Model):
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(80))
    email: Mapped[str] = mapped_column(String(120), unique=True)
    posts: Mapped[list[Post]] = relationship(back_populates="author")


class Tag(db.Model):
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(40), unique=True)
    posts: Mapped[list[Post]] = relationship(secondary=post_tags, back_populates="tags")


class Post(db.Model):
    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(80), unique=True)
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    created: Mapped[dt.datetime]
    author_id: Mapped[int] = mapped_column(ForeignKey("author.id"))
    author: Mapped[Author] = relationship(back_populates="posts")
    tags: Mapped[list[Tag]] = relationship(secondary=post_tags, back_populates="posts")
    comments: Mapped[list[Comment]] = relationship(
        back_populates="post", order_by="Comment.created"
    )

    def as_json(self) -> dict[str, Any]:
        return {
            "slug": self.slug,
            "title": self.title,
            "author": self.author.name,
            "created": self.created.isoformat(),
            "tags": [tag.name for tag in self.tags],
        }


class Comment(db.Model):
    id: Mapped[int] = mapped_column(primary_key=True)
    post_id: Mapped[int] = mapped_column(ForeignKey("post.id"))
    post: Mapped[Post] = relationship(back_populates="comments")
    name: Mapped[str] = mapped_column(String(80))
    body: Mapped[str] = mapped_column(Text)
    created: Mapped[dt.datetime]


class CommentForm(FlaskForm):
    name = StringField("Name", validators=[DataRequired(), Length(max=80)])
    body = TextAreaField("Comment", validators=[DataRequired(), Length(max=2000)])


blog = Blueprint("blog", __name__)
api = Blueprint("api", __name__, url_prefix="/api")


def _listing(query: Any, heading: str, endpoint: str, **pager_args: Any) -> str:
    query = query.options(selectinload(Post.author), selectinload(Post.tags))
    page = db.paginate(query.order_by(Post.created.desc()), per_page=PER_PAGE)
    return render_template(
        "index.html", page=page, heading=heading, endpoint=endpoint, pager_args=pager_args
    )


@blog.get("/")
def index() -> str:
    return _listing(select(Post), "Latest posts", "blog.index")


@blog.get("/tags/<name>")
def tag(name: str) -> str:
    found = db.session.scalar(select(Tag).where(Tag.name == name)) or abort(404)
    query = select(Post).where(Post.tags.contains(found))
    return _listing(query, f"Posts tagged #{found.name}", "blog.tag", name=found.name)


@blog.route("/posts/<slug>", methods=["GET", "POST"])
def post(slug: str) -> Any:
    query = select(Post).where(Post.slug == slug).options(selectinload(Post.comments))
    found = db.session.scalar(query) or abort(404)
    form = CommentForm()
    if form.validate_on_submit():
        comment = Comment(name=form.name.data, body=form.body.data, created=_now())
        found.comments.append(comment)
        db.session.commit()
        flash("Thanks, your comment is up.")
        return redirect(url_for("blog.post", slug=slug))
    return render_template("post.html", post=found, form=form)


@api.get("/posts")
def posts_json() -> Any:
    query = select(Post).options(selectinload(Post.author), selectinload(Post.tags))
    page = db.paginate(query.order_by(Post.created.desc()), per_page=PER_PAGE)
    return jsonify(posts=[p.as_json() for p in page.items], page=page.page, pages=page.pages)


def memory() -> Any:
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


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def _database() -> str:
    given = os.environ.get("FORKMEM_FLASK_DB")
    if given:
        return given
    folder = tempfile.mkdtemp(prefix="forkmem-flask-site-")
    maker = os.getpid()

    def remove() -> None:
        # Workers run atexit too on their way out: only the process that made it removes it.
        if os.getpid() == maker:
            shutil.rmtree(folder, ignore_errors=True)

    atexit.register(remove)
    return os.path.join(folder, "site.sqlite3")


def _fill() -> None:
    """Tables and a deterministic blog: 5 authors, 8 tags, 40 posts, 3 comments each."""
    if inspect(db.engine).has_table("post"):
        return
    db.create_all()
    authors = [Author(name=f"Author {i}", email=f"author{i}@example.org") for i in range(5)]
    tags = [Tag(name=n) for n in ("python", "web", "flask", "sql", "memory", "ops", "news", "misc")]
    start = dt.datetime(2026, 1, 1)
    for i in range(40):
        body = "\n\n".join(f"Paragraph {j} of post {i}. " * 8 for j in range(4))
        entry = Post(
            slug=f"post-{i}",
            title=f"Post number {i}",
            body=body,
            created=start + dt.timedelta(days=i),
            author=authors[i % len(authors)],
            tags=[tags[i % len(tags)], tags[(i * 3 + 1) % len(tags)]],
        )
        entry.comments = [
            Comment(name=f"reader {k}", body=f"Comment {k} on post {i}.", created=entry.created)
            for k in range(3)
        ]
        db.session.add(entry)
    db.session.commit()


def create_app() -> Flask:
    site = Flask(__name__, template_folder=str(HERE / "flask_templates"))
    site.config.update(
        SITE_NAME="forkmem example blog",
        SECRET_KEY="forkmem-example-only-not-secret",  # an example site on 127.0.0.1
        SQLALCHEMY_DATABASE_URI="sqlite:///" + _database(),
    )
    db.init_app(site)
    site.register_blueprint(blog)
    site.register_blueprint(api)
    site.add_url_rule("/memory", view_func=memory)

    @site.context_processor
    def navigation() -> dict[str, Any]:
        return {
            "all_tags": db.session.scalars(select(Tag).order_by(Tag.name)).all(),
            "post_count": db.session.scalar(select(func.count(Post.id))),
        }

    with site.app_context():
        _fill()
        # The connection that filled the database must not be inherited by forked workers.
        db.engine.dispose()
    return site


app = create_app()
