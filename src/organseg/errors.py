"""The one exception type for problems with what the user gave us."""


class InputError(ValueError):
    """Bad input: a file, folder, option or value the user can fix.

    The message is one line that names the file (or option) and says what to do.
    The command line prints it without a traceback and exits with status 2.
    """
