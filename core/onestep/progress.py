"""Progress bars (tqdm) for the long jobs outside the training loop: encoding a folder, training
an autoencoder or the metrics' classifier, fitting OT potentials, scoring a board. A bar shows
only where someone watches: on a terminal (stderr is a TTY) and not under CI (env ``CI`` set),
so logs and captured output stay free of carriage-return lines."""
from __future__ import annotations

import os
import sys


def shown() -> bool:
    """Whether progress bars draw: stderr is a terminal and ``CI`` is unset."""
    return not os.environ.get("CI") and sys.stderr.isatty()


def bar(total: int | None = None, desc: str | None = None, unit: str = "it", initial: int = 0, show: bool = True):
    """A tqdm bar on stderr (``show`` False, or :func:`shown` false: a silent one that still counts);
    close it, or use it as a context manager."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, initial=initial, disable=not (show and shown()),
                dynamic_ncols=True, leave=False)
