"""The one exception type the CLI turns into a single line and exit code 2."""


class DpbenchError(Exception):
    """Bad input or an unusable environment: the message says what to do, no traceback."""


class RunBusy(DpbenchError):
    """The run is held by another process, or another process finished it meanwhile: a sweep skips it."""

    exit_code = 75  # EX_TEMPFAIL
