"""Run several `polyvis` commands in one process: `python -m polyvis.nano.stages '[[...], ...]'`.

A nano run is an align stage, a training stage and an evaluation; as separate processes each
paid for importing torch and transformers again. Stops at the first command that fails, with
its exit status.
"""

from __future__ import annotations

import json
import sys


def run_stages(stages: list[list[str]]) -> int:
    """Each stage is the argument list of one `polyvis` command; returns the first non-zero
    exit status, or 0."""
    from polyvis.cli import main

    for argv in stages:
        rc = main(argv)
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit('usage: python -m polyvis.nano.stages \'[["train", ...], ["eval", ...]]\'')
    sys.exit(run_stages(json.loads(sys.argv[1])))
