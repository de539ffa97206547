"""Package version, used in every cache key."""

__version__ = "0.1.0"
