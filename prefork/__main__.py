"""``python -m prefork``: the same command line as ``prefork``."""

from prefork.cli import main

raise SystemExit(main())
