"""One module per deploy target: docker, compose, k8s."""

TARGETS = ("docker", "compose", "k8s")
