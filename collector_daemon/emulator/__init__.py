"""Exchange emulator: replays recorded exchange traffic over a local WebSocket + HTTP server.

Modules: :mod:`.venue` (the venue-emulation interface and :class:`~.venue.Event`), :mod:`.replay`
(capture reading, timeline playing, faults, counting, the fast path), :mod:`.server`
(``EmulatorServer``, ``EmulatorConfig`` and the ``tickvault emulate`` command line), :mod:`.tls`
(the CA and server certificate of ``--tls``). Venue specifics live in
``collector_daemon/venues/<venue>/emulation`` (Deribit: a package).
"""
