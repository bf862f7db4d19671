"""Deployments: render templates, assemble an offline build context, build and run images, write manifests.

The flow is one way: :mod:`plan` decides what to bake (model versions resolved to numbers, the container's
config), :mod:`context` writes the build context (models, wheelhouse, prodai wheel, Dockerfile),
:mod:`engine` builds and runs it through the Docker SDK, :mod:`targets` adds the compose and Kubernetes files, and
:mod:`records` remembers what runs where (``.prodai/deployments/<name>.json``).
"""
