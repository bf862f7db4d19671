"""prodai export: turn a registered version into an ONNX version (fp32 or int8), checked against torch first."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from prodai_cli.commands._common import JsonOption, console, settings


def command(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="The version to export: NAME, NAME@ALIAS or NAME/VERSION.")],
    to: Annotated[str, typer.Option("--to", help="Target format (onnx).")] = "onnx",
    quantize: Annotated[
        str | None,
        typer.Option(
            "--quantize", help="int8: quantize the encoder (dynamic, else blockwise where dynamic misses tolerance)."
        ),
    ] = None,
    alias: Annotated[list[str] | None, typer.Option("--alias", "-a", help="Alias to point at the new version.")] = None,
    json_flag: JsonOption = False,
) -> None:
    """Export REF to ONNX, compare it with torch on 2,000 texts, and register it as a new version.

    The new version carries prodai.runtime.backend=onnx and its equivalence figures as tags; serve, batch and
    A/B splits load it like any other version. A result outside tolerance (fp32: max abs difference 1e-4 and
    identical labels; int8: 99% label agreement, mean embedding cosine 0.99) registers nothing and exits 1.
    int8 tries ONNX Runtime's dynamic quantization first and, where it misses, blockwise int8 (MatMulNBits).

    Example: prodai export sentiment@production --to onnx --quantize int8 --alias int8
    """
    from prodai_cli.errors import ExportRejectedError, UsageError
    from prodai_cli.export import FORMATS, export_onnx

    out = console(ctx, json_flag)
    if to not in FORMATS:
        raise UsageError(f"Unknown export format {to!r}", hint=f"Use --to {' or '.join(FORMATS)}")
    project = settings(ctx)
    try:
        with out.status(f"Exporting {ref} to {to}"):
            result = export_onnx(project, ref, quantize=quantize, aliases=list(alias or []), on_status=out.debug)
    except ExportRejectedError as exc:
        out.result({"registered": False, "source": ref, "equivalence": exc.figures}, _figures(exc.figures))
        raise
    data = result.to_dict()
    out.result({"registered": True, **data}, _figures(data["equivalence"]))
    out.success(
        f"Registered {result.version.name} version {result.version.version} ({result.version.uri}): "
        f"ONNX {result.precision} export of {result.source}"
    )


def _figures(figures: dict[str, Any]) -> str:
    """The equivalence figures as plain lines (None figures do not apply to the task)."""
    names = {
        "sample_size": "sample texts",
        "max_abs_diff": "max abs difference",
        "label_agreement": "label agreement",
        "mean_cosine": "mean embedding cosine",
        "min_cosine": "lowest embedding cosine",
        "int8_scheme": "int8 scheme",
    }
    lines = [f"{label:<24}{_number(figures[key])}" for key, label in names.items() if figures.get(key) is not None]
    lines.append(f"{'within tolerance':<24}{'yes' if figures.get('passed') else 'no'}")
    return "\n".join(lines)


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
