"""Allow ``python -m histoseg_cli``."""

from histoseg_cli.app import main

if __name__ == "__main__":
    main()
