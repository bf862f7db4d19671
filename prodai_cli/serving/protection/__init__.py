"""The server's protection wing: API keys, rate limits, the response cache, input/output filters, Redis.

- :mod:`~prodai_cli.serving.protection.steps`: the pipeline steps that put them in the request path;
- :mod:`~prodai_cli.serving.protection.auth`, :mod:`~prodai_cli.serving.protection.ratelimit`,
  :mod:`~prodai_cli.serving.protection.cache`, :mod:`~prodai_cli.serving.protection.filters`: the parts;
- :mod:`~prodai_cli.serving.protection.redis_client`: the pipelined Redis client the cache and limiter share.

Nothing is re-exported here: the parts import each other, and a package that imported them all on entry
would turn those imports into cycles.
"""
