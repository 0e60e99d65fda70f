"""Momentum encoders, the memory bank and the distributed helpers both objectives share.

With one process (no ``torch.distributed`` group) every distributed helper is a no-op, so the
same code runs on a laptop and under ``torchrun``.

Example::

    key_net = make_momentum_copy(query_net)
    update_momentum(query_net, key_net, m=0.999)       # before the key forward
    x_shuf, order = batch_shuffle(x)                   # shuffle-BN across ranks
    k = batch_unshuffle(key_net(x_shuf), order)
    average_batchnorm_stats(query_net)                 # before a checkpoint: the ranks' BN statistics
    bank = MemoryBank(size=128, dim=32)
    bank.enqueue(k)                                    # gathers from every rank first
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = [
    "world_size",
    "rank",
    "is_distributed",
    "make_momentum_copy",
    "update_momentum",
    "concat_all_gather",
    "batch_shuffle",
    "batch_unshuffle",
    "MemoryBank",
    "average_batchnorm_stats",
]


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def make_momentum_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with ``requires_grad=False`` everywhere (the key network)."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def update_momentum(online: nn.Module, target: nn.Module, m: float) -> None:
    """``target = m * target + (1 - m) * online`` for every parameter (buffers are left alone:
    the key network keeps its own BatchNorm statistics, as in MoCo).

    Raises:
        ValueError: ``m`` outside [0, 1] or parameter lists that differ.
    """
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"momentum must lie in [0, 1], got {m}")
    src = list(online.parameters())
    dst = list(target.parameters())
    if len(src) != len(dst):
        raise ValueError(f"online and target networks differ: {len(src)} vs {len(dst)} parameters")
    if m == 1.0 or not dst:
        return
    torch._foreach_lerp_(dst, [p.detach() for p in src], 1.0 - m)


@torch.no_grad()
def concat_all_gather(x: torch.Tensor, same_size: bool = False) -> torch.Tensor:
    """Concatenate ``x`` (``n_r x ...``) of every rank along dim 0, in rank order; ``n_r`` may
    differ between ranks. No gradient flows. One process: ``x`` itself.

    The sizes are exchanged first (one host sync for all ranks together); ``same_size=True``
    (the caller knows every rank holds ``n`` rows, e.g. a batch) skips that exchange.
    """
    if not is_distributed():
        return x
    ws = world_size()
    x = x.contiguous()
    if same_size:
        out = [torch.empty_like(x) for _ in range(ws)]
        dist.all_gather(out, x)
        return torch.cat(out, dim=0)
    n = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
    sizes = torch.zeros(ws, device=x.device, dtype=torch.long)
    dist.all_gather(list(sizes.chunk(ws)), n)
    counts = sizes.tolist()
    biggest = max(counts)
    padded = x.new_zeros((biggest, *x.shape[1:]))
    padded[: x.shape[0]] = x
    out = [torch.zeros_like(padded) for _ in range(ws)]
    dist.all_gather(out, padded)
    return torch.cat([o[:c] for o, c in zip(out, counts)], dim=0)


def _rows_last(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """A channels_last ``B x C x H x W`` tensor as its contiguous ``B x H x W x C`` view (no copy),
    so that gathering and indexing rows keep that layout; other tensors as they are."""
    cl = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    return (x.permute(0, 2, 3, 1), True) if cl else (x, False)


@torch.no_grad()
def batch_shuffle(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Shuffle a batch across all ranks (shuffle-BN, MoCo): every rank gets a random slice of the
    global batch. Needs the same batch size on every rank. A channels_last batch stays channels_last.

    Args:
        x: ``B x ...`` this rank's batch.

    Returns:
        ``(x_shuffled B x ..., order)``; ``order`` is what :func:`batch_unshuffle` needs (None
        with one process, where ``x`` is returned unchanged).
    """
    if not is_distributed():
        return x, None
    b = x.shape[0]
    rows, cl = _rows_last(x)
    gathered = concat_all_gather(rows, same_size=True)
    perm = torch.randperm(gathered.shape[0], device=x.device)
    dist.broadcast(perm, src=0)
    r = rank()
    out = gathered[perm[r * b : (r + 1) * b]]
    return (out.permute(0, 3, 1, 2) if cl else out), torch.argsort(perm)


@torch.no_grad()
def batch_unshuffle(x: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
    """Undo :func:`batch_shuffle` on the network's output ``x`` (``B x ...``; channels_last kept)."""
    if order is None:
        return x
    b = x.shape[0]
    rows, cl = _rows_last(x)
    gathered = concat_all_gather(rows, same_size=True)
    r = rank()
    out = gathered[order[r * b : (r + 1) * b]]
    return out.permute(0, 3, 1, 2) if cl else out


@torch.no_grad()
def average_batchnorm_stats(module: nn.Module) -> None:
    """Average the BatchNorm running means and variances of ``module`` over the ranks (in place).

    The networks train in DDP with ``broadcast_buffers=False``: in training mode BatchNorm
    normalises with the statistics of each rank's own batch (for the key network after the
    shuffle across ranks), and the running statistics, which only inference uses, drift apart
    between ranks. The trainer calls this before every checkpoint, so the saved statistics are
    those of every rank's images (not only rank 0's) and every rank continues from the same
    ones, as a resumed run does. The variance is the mean of the ranks' variances (the spread
    between the ranks' means is left out, as in the running estimate itself). One process: nothing.
    """
    if not is_distributed():
        return
    stats = [
        t
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.running_mean is not None
        for t in (m.running_mean, m.running_var)
    ]
    if not stats:
        return
    flat = torch.cat([t.reshape(-1).float() for t in stats])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for t in stats:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


class MemoryBank(nn.Module):
    """A FIFO queue of ``size`` L2-normalised ``dim``-d vectors with a write pointer.

    ``enqueue(keys)`` gathers the keys of every rank, then writes them at the pointer with
    wrap-around, so every rank holds the same queue. The queue starts as random unit vectors
    (as in MoCo). ``queue`` and ``ptr`` are buffers: they are saved and restored with the
    state dict.

    Example::

        bank = MemoryBank(128, 32)
        logits = q @ bank.queue.t()
        bank.enqueue(prototypes)       # P x 32, any P
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 0 or dim <= 0:
            raise ValueError(f"memory bank size must be >= 0 and dim > 0, got size={size}, dim={dim}")
        self.register_buffer("queue", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.queue.shape[0]

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, gather: bool = True) -> None:
        """Write ``keys`` (``n x dim``, this rank's) after gathering them from every rank.

        When more keys arrive than the queue holds, only the newest ``size`` are kept.
        """
        if gather:
            keys = concat_all_gather(keys)
        n, k = keys.shape[0], self.size
        if n == 0 or k == 0:
            return
        if keys.shape[1] != self.queue.shape[1]:
            raise ValueError(f"keys have dim {keys.shape[1]}, the memory bank {self.queue.shape[1]}")
        keys = keys.detach().to(self.queue.dtype)
        if n > k:
            keys = keys[-k:]
            n = k
        # the write position stays on the device: no host sync per step
        idx = (torch.arange(n, device=self.queue.device) + self.ptr) % k
        self.queue[idx] = keys
        self.ptr.copy_((self.ptr + n) % k)
