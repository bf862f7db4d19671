"""The server's A/B wing: sticky routing between versions and everything that keeps a variant answering.

- :mod:`~prodai_cli.serving.ab.router`: the sticky router (user id -> bucket -> variant by weight);
- :mod:`~prodai_cli.serving.ab.routing`: the live router in the pipeline, fallback, retries and the cascade;
- :mod:`~prodai_cli.serving.ab.breaker`: per-version circuit breakers and the retry helper;
- :mod:`~prodai_cli.serving.ab.reload`: hot reload of prodai.yaml (weights, versions) in a running server.
"""
