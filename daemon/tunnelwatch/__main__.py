"""Allows `python -m tunnelwatch`."""

from tunnelwatch.cli import main

raise SystemExit(main())
