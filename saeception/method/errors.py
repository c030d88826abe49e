"""Errors the stages raise on purpose (ConfigError lives with the config)."""


class DivergedError(FloatingPointError):
    """A training loss became NaN or infinite: the run is stopped at once, not retried."""


class CorruptCycleError(RuntimeError):
    """A cycle directory (checkpoint) is incomplete or does not match its checksums: never loaded."""
