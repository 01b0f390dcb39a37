"""The process heap while training: freed memory kept for reuse instead of handed back to the OS.

A training iteration frees and allocates the same few GB (activations, gradients) every time.
glibc serves every block above its mmap threshold (128 KiB, growing to 32 MiB) with a fresh
mmap() and unmaps it on free, and trims the top of its heap, so each iteration faults all of that
memory in again, page by page, zero-filled by the kernel: seconds of system time per full-width
FCN-32s iteration. keep_freed_memory() turns both off (M_MMAP_MAX 0, M_TRIM_THRESHOLD at its
maximum): blocks come from the heap and freed ones stay there for the next iteration. The price is
that the process keeps its high-water mark. Process-wide, for the life of the process; elsewhere
than glibc it does nothing.
"""
import ctypes
import platform

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
_INT_MAX = 2 ** 31 - 1

_kept = False


def keep_freed_memory():
    """Ask glibc to keep freed memory in the heap (see the module docstring); True once in effect,
    False where the C library is not glibc or refuses."""
    global _kept
    if not _kept and platform.libc_ver()[0] == "glibc":
        libc = ctypes.CDLL(None)
        _kept = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, _INT_MAX) == 1
    return _kept


def keeps_freed_memory():
    """Whether keep_freed_memory() is in effect in this process."""
    return _kept
