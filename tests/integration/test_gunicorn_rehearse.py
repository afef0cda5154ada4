"""Real gunicorn serving the real Django site (examples/django_site.py, admin, sqlite), with
``configure(rehearse=...)``: the master serves the pages once before forking, workers share
what that built, failures are logged, threads refuse, ``FORKMEM_DISABLE=1`` turns it all off.
The real Flask site (examples/flask_site.py: the SQLAlchemy ORM through Flask-SQLAlchemy, file
templates, a Flask-WTF form) is rehearsed too: the master disposes its engine before forking and
the workers query and write through connections of their own.

The load comes from wrk (Debian package ``wrk``) where it is installed, else from urllib.
"""

from __future__ import annotations

import contextlib
import http.cookiejar
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import pytest
from _servers import free_port, serve, wrk

import forkmem
from forkmem._immortal import unsupported_reason

if TYPE_CHECKING:
    from collections.abc import Iterator

pytest.importorskip("gunicorn")
pytest.importorskip("django")

pytestmark = [pytest.mark.integration, pytest.mark.linux_only, pytest.mark.timeout(180)]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PAGES = ["/", "/admin/login/"]
FLASK_PAGES = ["/", "/posts/post-3", "/tags/python", "/api/posts"]
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def site_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("django")
    env = dict(os.environ, FORKMEM_DJANGO_DB=str(folder / "db.sqlite3"))
    env["XDG_RUNTIME_DIR"] = str(folder)  # gunicorn's control socket stays in tmp
    env.pop("FORKMEM_DISABLE", None)
    subprocess.run(
        [sys.executable, str(EXAMPLES / "django_site.py"), "migrate"], env=env, check=True
    )
    return env


@contextlib.contextmanager
def _serve(
    conf: str,
    tmp: Path,
    env: dict[str, str],
    *extra: str,
    workers: int = 2,
    app: str = "django_site:application",
) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    config = tmp / "forkmem.conf.py"
    config.write_text(conf)
    log = tmp / "gunicorn.log"
    port = free_port()
    command = [
        sys.executable, "-m", "gunicorn", "-c", str(config), "--preload", "--workers",
        str(workers), "--worker-class", "sync", "--bind", f"127.0.0.1:{port}",
        "--chdir", str(EXAMPLES), *extra, app,
    ]  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    with serve(command, log, env, url=base + "/") as proc:
        yield base, proc, log


def _load(base: str, seconds: int, tmp: Path, pages: list[str] = PAGES) -> tuple[int, int]:
    """Requests served and failed (non-2xx/3xx, socket errors) over ``seconds`` of load."""
    if shutil.which("wrk") is None:
        served = failed = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for page in pages:
                try:
                    with urllib.request.urlopen(base + page, timeout=10) as answer:
                        answer.read()
                    served += 1
                except (urllib.error.URLError, OSError):
                    failed += 1
        return served, failed
    script = tmp / "pages.lua"
    script.write_text(
        "local p = {" + ", ".join(f'"{page}"' for page in pages) + "}\nlocal i = 0\n"
        'request = function() i = i + 1 return wrk.format("GET", p[(i % #p) + 1]) end\n'
    )
    return wrk(base, seconds, script=script)


def _worker_uss(master: int) -> list[int]:
    return [forkmem.memory(child.pid).uss for child in psutil.Process(master).children()]


def _wrap_site(path: Path, module: str, line: str) -> None:
    """A WSGI module of the test's own: runs ``line`` (after ``import module``), then the
    Django site's answer."""
    path.write_text(
        f"import {module}\n"
        "from django_site import application as site\n"
        "def application(environ, start_response):\n"
        f"    {line}\n"
        "    return site(environ, start_response)\n"
    )


def test_rehearsed_workers_keep_less_private_memory(
    tmp_path: Path, site_env: dict[str, str]
) -> None:
    plain_dir, warm_dir = tmp_path / "plain", tmp_path / "warm"
    plain_dir.mkdir()
    warm_dir.mkdir()
    plain = "from forkmem.integrations.gunicorn import *  # noqa: F403\n"
    warm = plain + (
        "import forkmem.integrations.gunicorn as fg\n"
        f"fg.configure(rehearse={PAGES!r} + [{{'PATH_INFO': '/admin/login/', "
        "'HTTP_ACCEPT_LANGUAGE': 'en'}])\n"
    )
    with _serve(plain, plain_dir, site_env) as (base, proc, _log):
        served, failed = _load(base, 3, plain_dir)
        time.sleep(0.5)
        plain_uss = _worker_uss(proc.pid)
    assert served > 0
    assert failed == 0
    with _serve(warm, warm_dir, site_env) as (base, proc, log):
        served, failed = _load(base, 3, warm_dir)
        time.sleep(0.5)
        warm_uss = _worker_uss(proc.pid)
        text = log.read_text()
    assert served > 0
    assert failed == 0
    assert "forkmem: rehearsed 3 request(s) x 32 round(s) in the gunicorn master" in text
    assert "(0 failed); closed django; packed " in text  # the request path's code, together
    # What the first requests build (the resolver, templates, translations) is shared now.
    assert max(warm_uss) < min(plain_uss) - 1 * MiB, (plain_uss, warm_uss)


def test_no_failed_requests_while_max_requests_recycles_rehearsed_workers(
    tmp_path: Path, site_env: dict[str, str]
) -> None:
    conf = (
        "from forkmem.integrations.gunicorn import *  # noqa: F403\n"
        "import forkmem.integrations.gunicorn as fg\n"
        f"fg.configure(rehearse={PAGES!r})\n"
    )
    with _serve(conf, tmp_path, site_env, "--max-requests", "40") as (base, _proc, log):
        served, failed = _load(base, 4, tmp_path)
        text = log.read_text()
    assert served > 120, served  # every worker was replaced at least once meanwhile
    assert failed == 0
    assert text.count("Autorestarting worker") >= 2, text


def test_a_failing_rehearsal_page_is_logged_and_the_server_runs(
    tmp_path: Path, site_env: dict[str, str]
) -> None:
    conf = (
        "from forkmem.integrations.gunicorn import *  # noqa: F403\n"
        "import forkmem.integrations.gunicorn as fg\n"
        "fg.configure(rehearse=['/no-such-page', '/'])\n"
    )
    with _serve(conf, tmp_path, site_env) as (base, _proc, log):
        with urllib.request.urlopen(base + "/admin/login/", timeout=10) as answer:
            assert answer.status == 200
        text = log.read_text()
    assert "forkmem: rehearsing /no-such-page answered '404 Not Found'" in text
    assert "rehearsed 2 request(s) x 32 round(s)" in text
    assert "(1 failed)" in text
    assert text.count("rehearsing /no-such-page") == 1  # later rounds skip what failed


def test_a_rehearsal_that_leaves_a_thread_refuses_to_fork(
    tmp_path: Path, site_env: dict[str, str]
) -> None:
    # A page of the test's own: the site's index, plus a thread the app forgets to stop.
    _wrap_site(
        tmp_path / "threaded_site.py",
        "threading",
        "threading.Thread(target=threading.Event().wait, name='poller', daemon=True).start()",
    )
    conf = tmp_path / "conf.py"
    conf.write_text(
        "from forkmem.integrations.gunicorn import *  # noqa: F403\n"
        "import forkmem.integrations.gunicorn as fg\n"
        "fg.configure(rehearse=['/'])\n"
    )
    env = dict(site_env, PYTHONPATH=os.pathsep.join([str(tmp_path), str(EXAMPLES)]))
    proc = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", str(conf), "--preload", "--workers", "1",
         "--bind", f"127.0.0.1:{free_port()}", "threaded_site:application"],
        env=env, capture_output=True, text=True, timeout=90, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "started thread(s) that are still running" in proc.stderr
    assert "'poller'" in proc.stderr
    assert "Booting worker" not in proc.stderr


def test_forkmem_disable_turns_the_hooks_off(tmp_path: Path, site_env: dict[str, str]) -> None:
    conf = (
        "from forkmem.integrations.gunicorn import *  # noqa: F403\n"
        "import forkmem.integrations.gunicorn as fg\n"
        f"fg.configure(rehearse={PAGES!r})\n"
    )
    env = dict(site_env, FORKMEM_DISABLE="1")
    with _serve(conf, tmp_path, env) as (base, _proc, log):
        with urllib.request.urlopen(base + "/", timeout=10) as answer:
            assert answer.status == 200
        text = log.read_text()
    assert "FORKMEM_DISABLE is set; the gunicorn integration does nothing" in text
    assert "forkmem: froze" not in text
    assert "rehearsed" not in text


# ---------------------------------------------------------------------------------------------
# refork_after: a warmed worker becomes the mold that forks the others


REFORK = (
    "from forkmem.integrations.gunicorn import *  # noqa: F403\n"
    "import forkmem.integrations.gunicorn as fg\n"
    "fg.configure(refork_after=30)\n"
)


def _mold(log: Path) -> int:
    found = re.findall(r"worker pid (\d+) is the mold now", log.read_text())
    assert found, log.read_text()[-3000:]
    return int(found[0])


def _forked_by_mold(text: str) -> set[int]:
    return {int(p) for p in re.findall(r"Booting worker with pid: (\d+) \(forked by", text)}


def _assert_mold_packed(text: str) -> None:
    """The mold packed the code its last requests ran, where the master's objects are immortal
    (and said why not elsewhere)."""
    if unsupported_reason() is None:
        packed = re.search(r"made immortal; packed (\d+) code objects \(\d+ KiB\)", text)
        assert packed, text[-3000:]
        assert int(packed.group(1)) > 50, packed.group(0)
    else:
        assert "the mold will not pack code" in text, text[-3000:]


@pytest.mark.parametrize("worker_class", ["sync", "gthread"])
def test_refork_replaces_workers_without_failing_a_request(
    tmp_path: Path, site_env: dict[str, str], worker_class: str
) -> None:
    extra = ("--worker-class", worker_class, "--max-requests", "80")
    with _serve(REFORK, tmp_path, site_env, *extra, workers=3) as (base, proc, log):
        # Load until the mold has forked more than two replacements: how many requests a fixed
        # window serves depends on the machine (without wrk, one client in Python serves them
        # one by one; a loaded host halves that), so wait for the event with a deadline.
        served = failed = 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            more, lost = _load(base, 5, tmp_path)
            served, failed = served + more, failed + lost
            if served > 200 and len(_forked_by_mold(log.read_text())) > 3 + 2:
                break
        time.sleep(1.0)
        mold = _mold(log)
        children = {c.pid: c for c in psutil.Process(proc.pid).children()}
        text = log.read_text()
        # Every worker now is one the mold forked, and the master's own child.
        booted = _forked_by_mold(text)
        workers = set(children) - {mold}
        assert mold in children
        assert workers, text[-3000:]
        assert workers <= booted, (workers, booted, text[-3000:])
        for pid in workers:
            assert children[pid].ppid() == proc.pid
    assert served > 200
    assert failed == 0, text[-3000:]
    _assert_mold_packed(text)
    # max_requests recycled mold-forked workers too, and the mold forked their replacements.
    assert len(booted) > 3 + 2, text[-3000:]
    assert "Autorestarting worker" in text


def test_a_worker_that_claimed_the_mold_early_and_recycles_becomes_the_mold(
    tmp_path: Path, site_env: dict[str, str]
) -> None:
    # With packing, the token is claimed 16 requests before refork_after (the worker packs,
    # then serves on the copies); max_requests ends that worker before it gets to 30.
    if unsupported_reason() is not None:
        pytest.skip("the mold packs (and the token is claimed early) where immortalizing works")
    with _serve(REFORK, tmp_path, site_env, "--max-requests", "20", workers=2) as (
        base,
        proc,
        log,
    ):
        served = failed = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            more, lost = _load(base, 2, tmp_path)
            served, failed = served + more, failed + lost
            if len(_forked_by_mold(log.read_text())) >= 2:
                break
        text = log.read_text()
        mold = _mold(log)
        assert mold in {c.pid for c in psutil.Process(proc.pid).children()}
    assert failed == 0, text[-3000:]
    assert len(_forked_by_mold(text)) >= 2, text[-3000:]
    assert f"worker pid {mold} served 20 requests" in text, text[-3000:]
    _assert_mold_packed(text)


def _kill_the_claimant(log: Path, killed: list[int], deadline: float) -> None:
    """SIGKILL the first worker that claims the mold token, as soon as it says so."""
    while time.monotonic() < deadline:
        found = re.search(r"worker pid (\d+) claimed the mold token", log.read_text())
        if found:
            killed.append(int(found.group(1)))
            os.kill(killed[0], signal.SIGKILL)
            return
        time.sleep(0.02)


def test_a_lost_mold_token_is_issued_again_and_when_the_mold_dies_the_master_forks_again(
    tmp_path: Path, site_env: dict[str, str]
) -> None:
    # Each request takes 0.1 s more, so the claimant's last 15 requests (where the mold packs,
    # it claims the token 15 requests before refork_after=30) take 1.5 s at least: time to
    # SIGKILL it as a timeout or the OOM killer would.
    _wrap_site(tmp_path / "slow_site.py", "time", "time.sleep(0.1)")
    # The caller's PYTHONPATH stays last: it may name the forkmem under test.
    path = [str(tmp_path), str(EXAMPLES), *filter(None, [site_env.get("PYTHONPATH")])]
    env = dict(site_env, PYTHONPATH=os.pathsep.join(path))
    early = unsupported_reason() is None  # elsewhere the claimant is the mold at once
    with _serve(REFORK, tmp_path, env, workers=2, app="slow_site:application") as (
        base,
        proc,
        log,
    ):
        killed: list[int] = []
        if early:
            deadline = time.monotonic() + 60
            killer = threading.Thread(target=_kill_the_claimant, args=(log, killed, deadline))
            killer.start()
            lost = 0
            while not killed and time.monotonic() < deadline:
                lost += _load(base, 2, tmp_path)[1]
            killer.join()
            assert killed, log.read_text()[-3000:]
            assert lost <= 1, lost  # the request the claimant was serving, at most
        # The token goes to the next worker that gets there; a mold forms and replaces them.
        served = failed = 0
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            more, lost = _load(base, 2, tmp_path)
            served, failed = served + more, failed + lost
            if "is the mold now" in log.read_text() and len(_forked_by_mold(log.read_text())) >= 2:
                break
        mold = _mold(log)
        text = log.read_text()
        assert failed == 0, text[-3000:]
        assert len(_forked_by_mold(text)) >= 2, text[-3000:]
        if early:
            assert mold != killed[0]
            assert (
                f"the mold token is lost (worker pid {killed[0]}, which claimed it, exited "
                "before it became the mold); issued again" in text
            ), text[-3000:]
            assert f"worker pid {mold} claimed the mold token" in text, text[-3000:]
            _assert_mold_packed(text)
        # Then the mold dies: the master forks workers itself again.
        os.kill(mold, signal.SIGKILL)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTTIN)  # one more worker: the master must fork it itself
        deadline = time.monotonic() + 20
        while "is gone" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)
        with urllib.request.urlopen(base + "/", timeout=10) as answer:
            assert answer.status == 200
        text = log.read_text()
    assert f"the mold (pid {mold}) is gone" in text, text[-3000:]
    after = text.split("is gone", 1)[1]
    assert "Booting worker with pid" in after
    assert "forked by the mold" not in after
    assert "the mold token is lost" not in after  # one mold per master: no second one


def test_refork_refuses_a_worker_class_it_cannot_host() -> None:
    from gunicorn.workers.base import Worker

    from forkmem import InvalidArgument
    from forkmem.integrations._gunicorn_refork import check_worker_class

    with pytest.raises(InvalidArgument, match="sync and gthread"):
        check_worker_class(Worker)


# ---------------------------------------------------------------------------------------------
# The Flask site: SQLAlchemy's engine is disposed before the fork


def _comment(base: str, text: str) -> str:
    """Post a comment through the form (its CSRF token lives in the session cookie); the page
    the redirect leads to."""
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
    )
    with opener.open(base + "/posts/post-3", timeout=10) as answer:
        form = answer.read().decode()
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', form)
    assert token, form
    data = urllib.parse.urlencode({"csrf_token": token.group(1), "name": "test", "body": text})
    with opener.open(base + "/posts/post-3", data=data.encode(), timeout=10) as answer:
        return str(answer.read().decode())


# Each worker says whether SQLAlchemy's pool connects through a packed copy (the rehearsal's
# recorded round, or the mold's recording, ran the connect path: it started without a connection).
CONNECT_PACKED = (
    "def post_fork(server, worker):\n"
    "    fg.post_fork(server, worker)\n"
    "    from sqlalchemy.pool.base import _ConnectionRecord\n"
    "    from forkmem import _code_pack\n"
    "    code = _ConnectionRecord._ConnectionRecord__connect.__code__\n"
    "    worker.log.info('connect path packed: %s', id(code) in _code_pack._copy_ids)\n"
)


def _holds(pid: int, path: Path) -> bool:
    return any(f.path == str(path) for f in psutil.Process(pid).open_files())


def test_rehearsed_flask_site_disposes_its_engine_and_workers_share_more(tmp_path: Path) -> None:
    pytest.importorskip("flask_sqlalchemy")
    pytest.importorskip("flask_wtf")
    runs = {}
    for name, conf in {
        "stock": "",
        "rehearsed": (
            "from forkmem.integrations.gunicorn import *  # noqa: F403\n"
            "import forkmem.integrations.gunicorn as fg\n"
            f"fg.configure(rehearse={FLASK_PAGES!r})\n" + CONNECT_PACKED
        ),
    }.items():
        folder = tmp_path / name
        folder.mkdir()
        db = folder / "site.sqlite3"
        env = dict(os.environ, FORKMEM_FLASK_DB=str(db), XDG_RUNTIME_DIR=str(folder))
        env.pop("FORKMEM_DISABLE", None)
        with _serve(conf, folder, env, app="flask_site:app") as (base, proc, log):
            # The master made the database, then its connections were closed before the first
            # fork (by the site itself, and again after the rehearsal): it holds no descriptor
            # of the file, and each worker opens its own.
            master_held = _holds(proc.pid, db)
            served, failed = _load(base, 3, folder, FLASK_PAGES)
            page = _comment(base, f"written by a {name} worker")
            time.sleep(0.5)
            workers = psutil.Process(proc.pid).children()
            runs[name] = {
                "master_held": master_held or _holds(proc.pid, db),
                "workers_hold": any(_holds(c.pid, db) for c in workers),
                "uss": [forkmem.memory(c.pid).uss for c in workers],
                "served": served,
                "failed": failed,
                "page": page,
                "log": log.read_text(),
            }
    for name, run in runs.items():
        assert run["served"] > 0, name
        assert run["failed"] == 0, (name, run["log"][-3000:])
        assert not run["master_held"], name
        assert run["workers_hold"], name
        assert "Thanks, your comment is up." in run["page"], name
        assert f"written by a {name} worker" in run["page"], name
    text = runs["rehearsed"]["log"]
    assert f"forkmem: rehearsed {len(FLASK_PAGES)} request(s) x 32 round(s)" in text
    assert "(0 failed); closed sqlalchemy (1 engine(s))" in text
    assert "connect path packed: True" in text, text[-3000:]
    assert "connect path packed: False" not in text, text[-3000:]
    # Stock workers copy ~30 MiB each (their collections and refcounts, the ORM's compiled SQL,
    # Jinja's compiled templates), rehearsed ones ~8 MiB.
    stock, rehearsed = runs["stock"]["uss"], runs["rehearsed"]["uss"]
    assert max(rehearsed) < min(stock) - 10 * MiB, (stock, rehearsed)


def test_refork_flask_mold_hands_no_database_connection_to_its_workers(tmp_path: Path) -> None:
    pytest.importorskip("flask_sqlalchemy")
    pytest.importorskip("flask_wtf")
    db = tmp_path / "site.sqlite3"
    env = dict(os.environ, FORKMEM_FLASK_DB=str(db), XDG_RUNTIME_DIR=str(tmp_path))
    env.pop("FORKMEM_DISABLE", None)
    with _serve(REFORK + CONNECT_PACKED, tmp_path, env, app="flask_site:app") as (base, proc, log):
        served = failed = 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            more, lost = _load(base, 3, tmp_path, FLASK_PAGES)
            served, failed = served + more, failed + lost
            if len(_forked_by_mold(log.read_text())) >= 2:
                break
        mold = _mold(log)
        # The app made its engine at import, so the master's warm-up froze it; the mold still
        # disposed it: it holds no descriptor of the database, so its workers inherit none.
        mold_held = _holds(mold, db)
        master_held = _holds(proc.pid, db)
        page = _comment(base, "written by a worker the mold forked")
        text = log.read_text()
    assert served > 30
    assert failed == 0, text[-3000:]
    assert len(_forked_by_mold(text)) >= 2, text[-3000:]
    _assert_mold_packed(text)
    if unsupported_reason() is None:  # the mold packed the connect path its recording ran
        packed = dict(re.findall(r"\[(\d+)\] \[INFO\] connect path packed: (\w+)", text))
        assert {packed.get(str(pid)) for pid in _forked_by_mold(text)} == {"True"}, text[-3000:]
    assert not mold_held
    assert not master_held
    assert "written by a worker the mold forked" in page
