"""``make bench``: the template measured against plain FastAPI and plain Mangum, in one run.

Never part of the pass/fail tests. ``python -m bench --help`` lists the options;
results go to ``bench/results.md``, ``bench/results.png`` and the table of ``docs/benchmarks.md``.
"""
