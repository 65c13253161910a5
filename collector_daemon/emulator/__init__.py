"""Exchange emulator: replays recorded exchange traffic over a local WebSocket + HTTP server.

Modules: :mod:`.venue` (the venue-emulation interface and :class:`~.venue.Event`), :mod:`.replay`
(capture reading, timeline playing, faults, counting), :mod:`.server` (``EmulatorServer``,
``EmulatorConfig`` and the ``tickvault emulate`` command line). Venue specifics live in
``collector_daemon/venues/<venue>/emulation`` (Deribit: a package).
"""
