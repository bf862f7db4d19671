"""The Jinja2 templates shipped inside the package (``prodai_cli/templates``), rendered strictly.

``StrictUndefined`` turns a missing variable into an error instead of an empty string, so a template and
the code that fills it cannot drift apart silently.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jinja2

TEMPLATE_PACKAGE = "prodai_cli"
TEMPLATE_DIR = "templates"

# The server's metric names the alert rules and dashboard query (serving/metrics.py exports the first two;
# the breaker gauge is the name the A/B work exports per version).
METRICS = {
    "requests": "prodai_requests_total",
    "latency": "prodai_request_latency_seconds",
    "breaker_open": "prodai_breaker_open",
    "batch_size": "prodai_batch_size",
    "queue_depth": "prodai_queue_depth",
}


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """The Jinja2 environment over the packaged templates (StrictUndefined, no autoescape: not HTML)."""
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader(TEMPLATE_PACKAGE, TEMPLATE_DIR),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=False,
    )


def template_names() -> list[str]:
    """Every packaged template, as paths relative to the templates directory (``k8s/service.yaml.j2``)."""
    return sorted(name for name in environment().list_templates() if name.endswith(".j2"))


def render(template: str, /, **context: Any) -> str:
    """Render one packaged template.

    Args:
        template: Path relative to the templates directory, e.g. ``Dockerfile.j2``.
        **context: The template's variables; a missing one raises ``jinja2.UndefinedError``.

    Returns:
        The rendered text, ending in a newline.

    """
    text = environment().get_template(template).render(**context)
    return text if text.endswith("\n") else text + "\n"
