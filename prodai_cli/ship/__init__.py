"""prodai ship: deploy a version beside production, load-test it, check it, and only then move the alias.

The gate, step by step (:func:`ship`):

1. Resolve REF to a registered version; note which version the alias (default ``production``) points at.
2. Create a temporary API key for the load test and the checks (when ``auth.enabled``), in the config the
   candidate reads; it is revoked and removed at the end, whatever happens.
3. Start the candidate beside production: ``--target local`` runs ``python -m prodai_cli serve --model
   NAME/VERSION`` on a free loopback port with the project's config; ``--target docker|compose`` deploys it
   with :func:`prodai_cli.deploy.lifecycle.deploy` as ``<deployment>-candidate`` on a free port. Either way
   A/B is switched off for the candidate (``PRODAI_AB__ENABLED=false``) so it serves exactly REF.
4. Load-test it against the SLOs (:mod:`prodai_cli.loadtest`), logging the run to the version. This phase
   runs the candidate with ``rate_limit.enabled: false``: one load generator on one IP with one key would
   otherwise measure the rate limiter (429s), not the model; auth, cache and everything else stay on.
5. Restart the candidate with the project's config exactly as written and run the whole checklist
   (:mod:`prodai_cli.checks`) against it, rate limits included.
6. Only if the load test and every required item passed: ``--target docker|compose`` rolls REF out to the
   production deployment (its configured name and port; new replicas serve before the old ones stop, and
   if they fail production keeps the old version and the ship fails); then record the evidence (an MLflow
   run with the ship report, tags on the version) and move the alias. The candidate is always removed.

On any failure the candidate is stopped, production and the alias are left where they were, the report says why, and
``report.passed`` is False (the command exits 1).
"""

from prodai_cli.ship.gate import ship
from prodai_cli.ship.report import TARGETS, ShipReport, ShipStep, Target

__all__ = ["TARGETS", "ShipReport", "ShipStep", "Target", "ship"]
