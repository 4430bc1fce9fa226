"""What a long job shows while it runs: log lines and progress bars.

Library code never prints: it logs to a logger under "organseg" and wraps long loops in
`progress_bar`. The command line decides what reaches the user (`-q`, `-v`) by setting the
"organseg" logger's level; a bar shows on a terminal unless that level hides INFO.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

from tqdm import tqdm

ROOT_LOGGER = "organseg"


def progress_bar(iterable: Iterable | None = None, **options) -> tqdm:
    """A tqdm bar on stderr, shown on a terminal unless the organseg logger is set above INFO."""
    level = logging.getLogger(ROOT_LOGGER).level
    shown = sys.stderr.isatty() and level <= logging.INFO
    return tqdm(iterable, file=sys.stderr, disable=not shown, **options)
