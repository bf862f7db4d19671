"""Entry point for ``python -m prodai_cli``."""

from prodai_cli.cli import main

if __name__ == "__main__":
    main()
