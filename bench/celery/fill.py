"""Fills Celery's durable `celery` queue with N persistent task messages before the benchmark
starts the worker: python fill.py <noop|insert> <count>. Publishes through Celery itself, so the
messages are exactly what an application would send."""

import sys
import uuid

from tasks import app

kind, count = sys.argv[1], int(sys.argv[2])
name = {"noop": "bench.noop", "insert": "bench.insert"}[kind]
with app.producer_or_acquire() as producer:
    for _ in range(count):
        app.send_task(name, args=[str(uuid.uuid4())], producer=producer)
