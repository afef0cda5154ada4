"""Where the example Celery worker (``celery_app.py``) keeps its messages and results: on disk.

The filesystem transport and the file result backend need no broker server. The worker and
every client that sends it tasks use this one layout under a data folder; ``client()`` makes a
light app for them that does not import the worker's heap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from celery import Celery

if TYPE_CHECKING:
    from pathlib import Path

FOLDERS = ("queue", "processed", "results", "control")


def prepare(data: Path) -> Path:
    """Make the folders under ``data``; returns ``data``."""
    for sub in FOLDERS:
        (data / sub).mkdir(parents=True, exist_ok=True)
    return data


def configure(app: Celery, data: Path, *, polling_interval: float = 0.1) -> Celery:
    """Point ``app``'s filesystem transport at ``data`` and send JSON; returns ``app``."""
    app.conf.update(
        broker_transport_options={
            "data_folder_in": str(data / "queue"),
            "data_folder_out": str(data / "queue"),
            "processed_folder": str(data / "processed"),
            "control_folder": str(data / "control"),  # default: ./control, the working directory
            "store_processed": False,
            "polling_interval": polling_interval,
        },
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
    )
    return app


def client(data: Path, broker: str = "filesystem://", *, polling_interval: float = 0.1) -> Celery:
    """An app that sends tasks to the example worker on ``broker`` and reads their results."""
    prepare(data)
    app = Celery("client", broker=broker, backend=f"file://{data / 'results'}")
    return configure(app, data, polling_interval=polling_interval)
