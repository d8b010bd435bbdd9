"""Celery side of the job benchmark (scripts/bench): the same two jobs as the Rust worker's.

`noop` does nothing; `insert` inserts one row keyed by the job id into Postgres and commits
(idempotent, like the Rust handler). Messages are acknowledged after the task (acks_late), one
message in advance per process (prefetch multiplier 1), so prefetch equals concurrency as for the
Rust consumers. The broker and the database come from the environment
(BENCH_BROKER_URL, BENCH_DATABASE_URL).
"""

import os

import psycopg2
from celery import Celery

app = Celery("bench", broker=os.environ["BENCH_BROKER_URL"])
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
)

# One connection per worker process, opened on its first job.
_connection = None


def _database():
    global _connection
    if _connection is None:
        _connection = psycopg2.connect(os.environ["BENCH_DATABASE_URL"])
        # One statement, committed on its own: the same round trips as the Rust job.
        _connection.autocommit = True
    return _connection


@app.task(name="bench.noop")
def noop(job_id):
    return None


@app.task(name="bench.insert")
def insert(job_id):
    connection = _database()
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO bench_jobs (job_id) VALUES (%s) ON CONFLICT DO NOTHING", (job_id,)
        )
