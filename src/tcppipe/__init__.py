"""tcppipe: a byte-exact, exactly-once log file pipe. The API is the CLI."""

__version__ = "0.1.0"
