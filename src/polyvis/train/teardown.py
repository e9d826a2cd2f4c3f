"""The end of a training run's process group, without gloo's deadlock at exit.

gloo's worker threads free each finished collective's tensors, which needs the GIL. A process
group dropped right after the last collective (DDP's reducer holds it, and goes when `train`
returns) joins those threads while the main thread holds the GIL: if one is still freeing, the
process never exits (docs/training.md, "A launch that did not exit"). So the main thread first
sleeps briefly after the last barrier, which lets them take the GIL and finish.
"""

from __future__ import annotations

import time
from typing import Any

SETTLE_SECONDS = 0.25


def end_training(accelerator: Any) -> None:
    """Wait for every process, let the process group's threads settle, then end it."""
    accelerator.wait_for_everyone()
    if accelerator.num_processes > 1:
        time.sleep(SETTLE_SECONDS)  # releases the GIL
    accelerator.end_training()
