"""Moving tensors between a stage's device and the host, where they cross to the next stage.

On CUDA a copy to or from pageable host memory goes through a driver staging buffer and blocks the
host for each tensor. With `pinned`, copies to the host land in page-locked buffers, are all queued
at once and waited for once; copies to the device start from a page-locked copy and run
asynchronously on the current stream, ordered before the kernels that read them. Off CUDA both are
plain copies, so the setting is harmless on a CPU.
"""

import torch


def to_host(tensors: tuple[torch.Tensor, ...], pinned: bool) -> tuple[torch.Tensor, ...]:
    """Contiguous CPU copies of `tensors`, ready to be pickled to the next stage."""
    if not pinned or not any(t.is_cuda for t in tensors):
        return tuple(t.detach().to("cpu").contiguous() for t in tensors)
    copies = []
    for tensor in tensors:
        buffer = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        copies.append(buffer.copy_(tensor.detach(), non_blocking=True))
    torch.cuda.current_stream().synchronize()  # one wait for all copies; the buffers are complete after it
    return tuple(copies)


def to_device(tensor: torch.Tensor, device: torch.device, pinned: bool, dtype: torch.dtype | None = None) -> torch.Tensor:
    """`tensor` (from the previous stage, on the CPU) on `device`, in `dtype` if given."""
    if pinned and device.type == "cuda" and not tensor.is_cuda:
        tensor = tensor.pin_memory()
        return tensor.to(device, dtype, non_blocking=True)
    return tensor.to(device, dtype)
