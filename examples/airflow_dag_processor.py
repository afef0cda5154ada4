"""A custom Airflow dag-processor entrypoint with forkmem.

``python -m forkmem.integrations.airflow dag-processor`` does all of this for you, with the same
arguments as ``airflow dag-processor``. Write your own entrypoint instead when you build the
manager yourself (your own subclass, your own start-up code): it is three lines around
`forkmem.integrations.airflow.manager_class()`, shaped like Airflow's own CLI command.

Run it in an environment where ``airflow dag-processor`` works (AIRFLOW_HOME set, database
migrated)::

    python examples/airflow_dag_processor.py             # parse forever, like the CLI
    python examples/airflow_dag_processor.py --num-runs 1 --stats /tmp/dag-processor.jsonl

Each parse child logs one line as it exits, and the manager a summary when it stops::

    forkmem: parse child pid=4121 file=dag_07.py exit=0 private=12.3 MiB ...
    forkmem: 24 parse children measured; private median 12.8 MiB (last 24), max 20.2 MiB; ...
"""

from __future__ import annotations

import argparse
import sys

from forkmem.integrations.airflow import AirflowOptions, manager_class


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-runs", type=int, default=-1, help="parse each file N times")
    parser.add_argument("--stats", metavar="PATH", help="append JSON lines here")
    args = parser.parse_args()

    # Immortalization exists on CPython 3.12 and 3.13; elsewhere warm up without it.
    immortal = sys.version_info[:2] in ((3, 12), (3, 13))
    options = AirflowOptions(warmup=True, immortalize=immortal, stats_file=args.stats)

    # Airflow is imported only here: forkmem never imports it on its own.
    from airflow.jobs.dag_processor_job_runner import DagProcessorJobRunner
    from airflow.jobs.job import Job, run_job

    manager = manager_class()(max_runs=args.num_runs, forkmem_options=options)
    runner = DagProcessorJobRunner(job=Job(), processor=manager)
    run_job(job=runner.job, execute_callable=runner._execute)
    return 0


if __name__ == "__main__":
    sys.exit(main())
