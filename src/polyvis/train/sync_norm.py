"""BatchNorm over the global batch when several processes train it (a trained ResNet/ConvNeXt-style
encoder under DDP or FSDP).

Each process sees only its part of `train.batch_size`, so a plain BatchNorm in training mode
normalises by that part's statistics and moves its running ones by them: two processes would
train another model than one. torch's SyncBatchNorm fixes that on GPUs only (it refuses CPU
tensors, so gloo runs could not use it); this does the same on any device with a differentiable
all-reduce of the per-channel sums.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes, differentiable: the gradient of every process's share is the sum of
    all processes' gradients (torch.distributed.nn's own is deprecated, with a warning per call)."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone()
        dist.all_reduce(out)
        return out


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    """The sum of `x` over every process, with its gradient."""
    return _AllReduceSum.apply(x)


class _GlobalBatchNorm:
    """Mixed in front of a BatchNorm class: training-mode statistics over every process's batch.
    Parameters, buffers and their names are the BatchNorm's own (checkpoints are unchanged)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)  # type: ignore[misc]
        if dist.get_world_size() == 1 or not self.track_running_stats:
            return super().forward(x)  # type: ignore[misc]
        self._check_input_dim(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        h = x.float()  # statistics in float32, as BatchNorm keeps them under autocast
        local = torch.tensor([h.numel() / h.shape[1]], dtype=torch.float32, device=x.device)
        count = all_reduce(local)[0]
        # two passes (mean, then squared deviations), as BatchNorm's variance is computed
        mean = all_reduce(h.sum(dims)) / count
        var = all_reduce(((h - mean.view(shape)) ** 2).sum(dims)) / count
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            m = self.momentum
            if m is None:  # cumulative moving average
                m = 1.0 / float(self.num_batches_tracked)
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            unbiased = var.detach() * count / max(float(count) - 1, 1.0)
            self.running_var.mul_(1 - m).add_(unbiased, alpha=m)
        y = (h - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


_CLASSES: dict[type, type] = {}


def sync_batch_norms(model: nn.Module) -> int:
    """Give every BatchNorm of `model` global-batch statistics in training mode; the number done.
    Eval mode (frozen encoders run so, see models.encoders.eval_if) is untouched."""
    done = 0
    for module in model.modules():
        cls = type(module)
        if not isinstance(module, _BatchNorm) or isinstance(module, _GlobalBatchNorm):
            continue
        if cls not in _CLASSES:
            _CLASSES[cls] = type(cls.__name__, (_GlobalBatchNorm, cls), {})
        module.__class__ = _CLASSES[cls]
        done += 1
    return done


def plain_batch_norms(model: nn.Module) -> None:
    """Undo sync_batch_norms (before the final model is saved or used in this process)."""
    for module in model.modules():
        if isinstance(module, _GlobalBatchNorm):
            module.__class__ = type(module).__mro__[2]
