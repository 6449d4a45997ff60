"""Tools for developing prefork (a private MariaDB for tests, `make run` and `make bench`); not installed."""
