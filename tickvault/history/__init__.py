"""Bulk imports of history that exchanges publish as downloadable files.

* :mod:`tickvault.history.sources`: the files of a PATH (a CSV file, a folder or a zip read in
  place), newline-aligned chunks of them with their line numbers, the rejects file.
* :mod:`tickvault.history.kraken_csv`: Kraken's OHLCVT and time-and-sales CSV files into
  ``exchange_candles`` and ``trades``.
"""
