"""The one exception type that reaches the user as a one-line message."""


class DDError(Exception):
    """A user-facing error. Its message is one line that names the cause and the fix.

    The command-line entry points print it as ``error: <message>`` and exit with status 2,
    without a traceback. Raise it for bad input (flags, files, datasets), never for bugs.
    """
