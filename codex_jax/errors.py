"""The one exception type for bad user input (config, files, checkpoints)."""


class UserError(Exception):
    """A problem with what the user gave us.

    The entry points print it as a single line ``error: <message>`` and exit with code 2. The message
    names what was wrong and where (config key, file:line, checkpoint path).
    """


EXIT_USER_ERROR = 2
