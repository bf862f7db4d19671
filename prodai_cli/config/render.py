"""Rendering config for people: the documented default prodai.yaml, and secrets masked for display."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from prodai_cli.config.schema import ProdaiConfig

_SECRET_WORDS = ("password", "secret", "token")


def mask_secrets(data: Any, key: str = "") -> Any:
    """Mask values that are secrets (key hashes, passwords in URLs) for display."""
    from urllib.parse import urlsplit, urlunsplit

    if isinstance(data, dict):
        return {k: mask_secrets(v, k) for k, v in data.items()}
    if isinstance(data, list):
        return [mask_secrets(v, key) for v in data]
    if isinstance(data, str):
        if key == "hash" or any(word in key.lower() for word in _SECRET_WORDS):
            return "****"
        if "://" in data and "@" in data:
            parts = urlsplit(data)
            if parts.password:
                netloc = parts.netloc.replace(f":{parts.password}@", ":****@")
                return urlunsplit(parts._replace(netloc=netloc))
    return data


def render_default_config() -> str:
    """The commented prodai.yaml that ``prodai init`` writes (and prodai.yaml.example holds).

    Generated from the pydantic model so the documented file can never drift from the schema.
    """
    import json

    out: list[str] = [
        "# prodai.yaml: configuration of prodai (https://github.com/prodai/prodai).",
        "# Every key is optional; the values shown are the defaults. Override any key with an",
        "# environment variable PRODAI_SECTION__KEY (e.g. PRODAI_SERVING__PORT=9000).",
        "",
    ]

    def scalar(value: Any) -> str:
        if value is None:
            return "null"
        if isinstance(value, str):
            return json.dumps(value)
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (list, dict)):
            return json.dumps(value)
        return str(value)

    def emit(model: type[BaseModel], instance: BaseModel, indent: int) -> None:
        pad = "  " * indent
        for name, field in model.model_fields.items():
            value = getattr(instance, name)
            doc = field.description or ""
            if isinstance(value, BaseModel):
                if indent == 0:
                    out.append("")
                out.append(f"{pad}# {doc}" if doc else f"{pad}#")
                out.append(f"{pad}{name}:")
                emit(type(value), value, indent + 1)
            else:
                dumped = value.model_dump() if isinstance(value, BaseModel) else value
                if isinstance(dumped, dict):
                    dumped = {k: (v.model_dump() if isinstance(v, BaseModel) else v) for k, v in dumped.items()}
                if isinstance(dumped, list):
                    dumped = [v.model_dump() if isinstance(v, BaseModel) else v for v in dumped]
                line = f"{pad}{name}: {scalar(dumped)}"
                out.append(f"{line}  # {doc}" if doc else line)

    emit(ProdaiConfig, ProdaiConfig(), 0)
    return "\n".join(out).rstrip() + "\n"
