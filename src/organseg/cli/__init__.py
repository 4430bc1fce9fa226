"""The `organseg` command line: the only layer that prints.

`parser` declares the commands, `commands` runs each one by calling one library function.
This module turns errors into one line and decides what the library's log shows: INFO
and above by default, WARNING and above with -q, DEBUG with -v. Heavy modules (torch,
SimpleITK, matplotlib) are imported inside the commands, so `organseg --help` answers at once.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Iterator

from organseg.cli.parser import build_parser
from organseg.errors import InputError, Preempted
from organseg.progress import ROOT_LOGGER

EXIT_INPUT_ERROR = 2
EXIT_INTERNAL_ERROR = 1
EXIT_PREEMPTED = 128 + 15  # as a process ended by SIGTERM
# The extra (pyproject.toml) that installs each optional package a command may need.
EXTRA_OF_PACKAGE = {
    "torch": "train",
    "onnx": "train",
    "onnxscript": "train",
    "onnxruntime": "runtime",
    "pydicom": "dicom",
    "highdicom": "dicom",
    "skimage": "dicom",
    "matplotlib": "report",
}


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the process exit status (the console script exits with it)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_INPUT_ERROR
    try:
        _refuse_torchrun_unless_supported(args)
        with warnings.catch_warnings(), _console(_log_level(args)):
            warnings.showwarning = _show_warning
            args.handler(args)
    except InputError as error:
        return _fail(args, str(error), EXIT_INPUT_ERROR)
    except Preempted as stop:
        print(f"organseg: {stop}", file=sys.stderr)
        return EXIT_PREEMPTED
    except ModuleNotFoundError as error:
        package = (error.name or "").split(".")[0]
        if package not in EXTRA_OF_PACKAGE:
            return _fail(args, f"internal error: {error} (rerun with --debug for the traceback)", EXIT_INTERNAL_ERROR)
        extra = EXTRA_OF_PACKAGE[package]
        message = (
            f'organseg {args.command} needs {package}, which is not installed here: pip install "organseg[{extra}]"'
        )
        return _fail(args, message, EXIT_INPUT_ERROR)
    except OSError as error:
        return _fail(args, _describe_os_error(error), EXIT_INPUT_ERROR)
    except KeyboardInterrupt:
        return _fail(args, "interrupted", 130)
    except Exception as error:  # noqa: BLE001 - last resort: one line instead of a traceback
        message = f"internal error: {type(error).__name__}: {error} (rerun with --debug for the traceback)"
        return _fail(args, message, EXIT_INTERNAL_ERROR)
    return 0


def _refuse_torchrun_unless_supported(args: argparse.Namespace) -> None:
    """Under torchrun, only the commands that split their work over the processes run (else each would redo it all)."""
    if "WORLD_SIZE" not in os.environ or getattr(args, "distributed", False):
        return
    from organseg.distributed import World

    if World.from_environment().is_distributed:
        raise InputError(
            f"{args.command} runs in one process; under torchrun run train, predict or pseudo-label (or drop torchrun)"
        )


def _fail(args: argparse.Namespace, message: str, status: int) -> int:
    if getattr(args, "debug", False):
        traceback.print_exc()
    for line in message.splitlines() or [""]:
        print(f"organseg: error: {line}", file=sys.stderr)
    return status


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line for people, without the source location."""
    print(f"organseg: warning: {message}", file=sys.stderr)


def _describe_os_error(error: OSError) -> str:
    where = f"{error.filename}: " if error.filename else ""
    reason = error.strerror or str(error)
    return f"{where}{reason}; check the path, its permissions and free disk space"


class _Console(logging.Handler):
    """The library's log for people: messages on stdout, warnings and errors as one line on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            print(f"organseg: warning: {message}", file=sys.stderr)
        else:
            print(message)


def _log_level(args: argparse.Namespace) -> int:
    if getattr(args, "quiet", False) or not _is_main_process():
        return logging.WARNING  # under torchrun, rank 0 speaks for all
    return logging.DEBUG if getattr(args, "verbose", False) else logging.INFO


def _is_main_process() -> bool:
    if "WORLD_SIZE" not in os.environ:
        return True
    from organseg.distributed import World

    return World.from_environment().is_main


@contextlib.contextmanager
def _console(level: int) -> Iterator[None]:
    """The organseg logger shown on the console at `level` for the length of a command."""
    logger = logging.getLogger(ROOT_LOGGER)
    saved = logger.level, logger.propagate, list(logger.handlers)
    logger.setLevel(level)
    logger.propagate = False
    logger.handlers = [_Console()]
    try:
        yield
    finally:
        logger.level, logger.propagate, logger.handlers = saved[0], saved[1], saved[2]
