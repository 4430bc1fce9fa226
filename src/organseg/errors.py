"""The one exception type for problems with what the user gave us."""


class InputError(ValueError):
    """Bad input: a file, folder, option or value the user can fix.

    The message is one line that names the file (or option) and says what to do.
    The command line prints it without a traceback and exits with status 2.
    """


class Preempted(Exception):
    """Training stopped on request (SIGTERM) after writing a checkpoint; `--resume` continues it exactly.

    Not an error of the user's: the command line prints the message and exits with 128 + 15,
    the status of a process ended by SIGTERM, so a job scheduler sees the stop it asked for.
    """
