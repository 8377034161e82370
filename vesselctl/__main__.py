"""Entry point for ``python -m vesselctl``."""

from vesselctl.cli import main

if __name__ == "__main__":
    main()
