"""The one exception type users see: a message that says what went wrong and what to do."""


class FastShowerError(Exception):
    """A user-facing error; the CLI prints its message without a traceback."""


class GeometryError(FastShowerError):
    """Bad geometry input: unknown builder, corrupt or mismatched geometry file."""
