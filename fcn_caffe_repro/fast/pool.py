"""BufferPool: output memory for the oneDNN steps of one fast plan, reused across steps and forwards."""
import torch

from ..torch_private import storage_use_count


class BufferPool:
    """A fresh large activation costs a page fault per 4 KiB page, which can take longer than the
    layer's arithmetic; writing into memory already mapped (zeroed, then oneDNN's in-place conv +
    add + ReLU) avoids them and gives the same values. A buffer is handed out only while nothing
    else uses its storage (no blob, view, numpy array or returned output), so a reused buffer never
    overwrites anything a caller or a later layer can still see. At most `size` buffers are kept
    (two serve VGG: a conv's input and its output); they stay allocated between forwards (the two
    largest activations) until release()."""

    MIN_BYTES = 1 << 20  # smaller outputs come from malloc's heap without faults anyway

    def __init__(self, size):
        self.size = size
        self.buffers = []  # [flat tensor, its storage use count when unused]
        self.reused = self.fresh = 0

    def take(self, shape, dtype, channels_last):
        """A zeroed tensor of `shape` in pooled memory, or None (the caller allocates)."""
        n = 1
        for d in shape:
            n *= d
        if n * torch.finfo(dtype).bits // 8 < self.MIN_BYTES or self.size == 0:
            return None
        # a buffer made under torch.inference_mode() cannot be written outside it
        writable = torch.is_inference_mode_enabled()
        free = [b for b in self.buffers if b[0].dtype == dtype and storage_use_count(b[0]) == b[1]
                and (writable or not b[0].is_inference())]
        fits = [b for b in free if b[0].numel() >= n]
        if fits:
            flat = min(fits, key=lambda b: b[0].numel())[0]
            self.reused += 1
        else:
            if len(self.buffers) >= self.size:
                if not free:
                    return None
                self.buffers.remove(free[0])  # a free one too small: replace it
            flat = torch.empty(n, dtype=dtype)
            self.buffers.append([flat, storage_use_count(flat)])
            self.fresh += 1
        if channels_last:
            out = flat[:n].view(shape[0], shape[2], shape[3], shape[1]).permute(0, 3, 1, 2)
        else:
            out = flat[:n].view(shape)
        return out.zero_()

    def release(self):
        self.buffers = []
