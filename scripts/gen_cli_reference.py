"""Generate docs/reference.md's command reference from the CLI itself (the same click tree `--help` renders).

python scripts/gen_cli_reference.py          # print the reference
python scripts/gen_cli_reference.py --write  # replace it in docs/reference.md between the markers
python scripts/gen_cli_reference.py --check  # exit 1 if docs/reference.md is out of date (used by a test)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer.main

from prodai_cli.cli import app

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "reference.md"
BEGIN = "<!-- BEGIN CLI REFERENCE -->"
END = "<!-- END CLI REFERENCE -->"


def _walk(command: Any, path: list[str]) -> list[tuple[list[str], Any]]:
    # Typer vendors its own click, so go by shape rather than isinstance.
    found: list[tuple[list[str], Any]] = [(path, command)]
    if hasattr(command, "commands"):
        for name in sorted(command.commands):
            sub = command.commands[name]
            if not sub.hidden:
                found.extend(_walk(sub, [*path, name]))
    return found


def _param_row(param: Any) -> str | None:
    if param.param_type_name == "argument":
        text = (getattr(param, "help", None) or "").replace("|", "\\|")
        name = (param.metavar or param.name or "").upper()
        required = " (required)" if param.required else ""
        return f"| `{name}` | {text}{required} | argument |"
    if param.hidden or param.name == "help":
        return None
    flags = ", ".join(f"`{o}`" for o in [*param.opts, *param.secondary_opts])
    default = ""
    if param.default not in (None, False, (), []) and not param.is_flag:
        default = f" (default: `{param.default}`)"
    text = (param.help or "").replace("|", "\\|")
    return f"| {flags} | {text}{default} | {'repeatable' if param.multiple else ''} |"


def render() -> str:
    """The markdown reference for every visible command."""
    root = typer.main.get_command(app)
    lines: list[str] = []
    for path, command in _walk(root, ["prodai"]):
        lines.append(f"## `{' '.join(path)}`")
        lines.append("")
        help_text = (command.help or "").strip()
        if help_text:
            lines.append(help_text.replace("\b\n", ""))
            lines.append("")
        ctx = command.context_class(command, info_name=" ".join(path))
        lines.append(f"Usage: `{' '.join(path)} {' '.join(command.collect_usage_pieces(ctx))}`")
        lines.append("")
        rows = [r for r in (_param_row(p) for p in command.params) if r]
        if rows:
            lines.extend(["| option | meaning | kind |", "|---|---|---|", *rows, ""])
    return "\n".join(lines).rstrip() + "\n"


def _replace(page: str, body: str) -> str:
    head, _, rest = page.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{body}{END}{tail}"


def main(argv: list[str]) -> int:
    """Print the reference, or ``--write`` it into place, or ``--check`` that it is current (exit 1 if not)."""
    body = render()
    current = REFERENCE.read_text(encoding="utf-8")
    updated = _replace(current, body)
    if "--write" in argv:
        REFERENCE.write_text(updated, encoding="utf-8")
        return 0
    if "--check" in argv:
        if updated != current:
            print("docs/reference.md is out of date: run `make docs`", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
