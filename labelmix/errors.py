"""The one exception type that reaches the user as a message, never as a traceback."""


class UserError(Exception):
    """Bad input from the user (a file, a flag, a config field).

    The CLI prints ``labelmix: error: <message>`` and exits with status 2. The message
    names what is wrong (the file, the field path) and, where it helps, what is allowed.
    """
