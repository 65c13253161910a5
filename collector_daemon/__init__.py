"""tickvault collector daemon: exactly-once capture of exchange market data into TimescaleDB."""

__version__ = "0.1.0"
