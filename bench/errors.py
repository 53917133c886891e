"""The one exception type the CLI turns into a single line and exit code 2."""


class DpbenchError(Exception):
    """Bad input or an unusable environment: the message says what to do, no traceback."""
