"""prefork: a pre-fork TCP server for line-protocol clients, with a green MySQL pool in every worker."""

__version__ = "0.1.0"
