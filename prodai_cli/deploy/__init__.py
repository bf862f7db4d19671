"""Deployments: render templates, assemble an offline build context, build and run images, write manifests.

The flow is one way: :mod:`plan` decides what to bake (model versions resolved to numbers, the container's
config), :mod:`build_context` writes the build context (models, wheelhouse, prodai wheel, Dockerfile),
:mod:`containers` builds and runs it through the Docker SDK, :mod:`targets` holds one module per target
(docker, compose, k8s), :mod:`lifecycle` deploys to a target and then reports, stops and rolls back from
:mod:`records` (``.prodai/deployments/<name>.json``, what runs where); :mod:`readiness` is the one poller
everything waits with.
"""
