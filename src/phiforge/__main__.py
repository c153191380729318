"""``python -m phiforge`` is the same as the ``phiforge`` console script."""

from phiforge.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
