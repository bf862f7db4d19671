"""Load tests with SLO gates: Locust runs in child processes, prodai judges the numbers.

Importing ``locust`` monkey-patches the whole process with gevent, so nothing in this package imports it
except :mod:`prodai_cli.loadtest.locustfile` and :mod:`prodai_cli.loadtest.child`, which only the Locust child
processes load. The parent process (the CLI, ``prodai ship``) uses :mod:`prodai_cli.loadtest.runner`.
"""
