"""Tender's benchmark: one run, one machine, one broker, ratios against plain Celery.

Run ``python -m bench`` (full, a few minutes) or ``python -m bench --quick`` (CI smoke,
under a minute). It starts its own Celery workers as subprocesses on a flushed Redis
database and a fresh PostgreSQL schema, prints a table of targets with PASS/FAIL and
writes ``bench/results/latest.json``. A FAIL is a finding, not an error: the exit
status is non-zero only when the harness itself breaks.

``python -m bench.hotpath`` counts the database round trips and the time spent per
stage of one payment, in-process, for profiling.
"""
