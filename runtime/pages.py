"""Transparent huge pages for the memory a model was just loaded into (Linux).

A decoding step streams every weight of the model once: SmolLM2's int8 graph reads about 80 MB per token, some
20,000 pages of 4 KiB, and a TLB miss on each of them costs a page-table walk on the way. Backed by 2 MiB pages the
same weights are about 40 pages. Linux gives anonymous memory huge pages only where the process asks for them under
its usual setting (/sys/kernel/mm/transparent_hugepage/enabled: "madvise"), and neither onnxruntime nor glibc asks.

`HugePages` returns the heap's free pages to the system (glibc's malloc_trim) and notes which pages of the process's
anonymous memory are present before a load; after it, every 2 MiB stretch that the load filled (most of its pages
present now and not before: new mappings, or freed memory the load reused) is advised MADV_HUGEPAGE (what grows there
later faults in as huge pages) and collapsed into huge pages at once (MADV_COLLAPSE, Linux 6.1). Memory the
application held before the load is left as it was. Where the system cannot (another OS, huge pages "never", an older
kernel, no /proc) nothing happens and `collapsed` stays 0: the model runs as before. Where /proc/self/pagemap cannot be
read, only mappings the load added count. glibc's `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` in the environment of a new
process asks for huge pages for all of its memory instead.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

HUGE_PAGE = 2 << 20  # x86-64's and arm64's (4 KiB granule) transparent huge page
PAGE = 4096
FILLED = 0.5  # a stretch is the load's when at least this share of its pages became present during it
MADV_HUGEPAGE, MADV_COLLAPSE = 14, 25  # <asm-generic/mman-common.h>
THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")
MAPS, PAGEMAP = Path("/proc/self/maps"), Path("/proc/self/pagemap")

Range = tuple[int, int, "np.ndarray | None"]  # start, end, which pages are present (None: unknown, taken as all)


def thp_mode() -> str | None:
    """The system's transparent huge page setting ("always", "madvise", "never"), None where it cannot be read."""
    try:
        text = THP_SETTING.read_text()
    except OSError:
        return None
    chosen = [w[1:-1] for w in text.split() if w.startswith("[") and w.endswith("]")]
    return chosen[0] if chosen else None


def anonymous_ranges(maps: str | None = None) -> list[tuple[int, int]]:
    """The private writable anonymous mappings (and the heap) of this process as (start, end) addresses, from
    /proc/self/maps (or the `maps` text given)."""
    if maps is None:
        maps = MAPS.read_text()
    ranges = []
    for line in maps.splitlines():
        fields = line.split()
        if len(fields) < 5 or not fields[1].startswith("rw") or fields[1][3:4] != "p":
            continue
        path = fields[5] if len(fields) > 5 else ""
        if path in ("", "[heap]"):
            start, end = (int(a, 16) for a in fields[0].split("-"))
            ranges.append((start, end))
    return ranges


def with_presence(ranges: list[tuple[int, int]]) -> list[Range]:
    """Each range with its pages' present bits (bit 63 of /proc/self/pagemap's entries, readable without privileges);
    None for all of them where pagemap cannot be read."""
    try:
        fd = os.open(PAGEMAP, os.O_RDONLY)
    except OSError:
        return [(lo, hi, None) for lo, hi in ranges]
    try:
        out = []
        for lo, hi in ranges:
            n = (hi - lo) // PAGE
            raw = os.pread(fd, n * 8, lo // PAGE * 8)
            bits = (np.frombuffer(raw, np.uint64) >> np.uint64(63)).astype(bool) if len(raw) == n * 8 else None
            out.append((lo, hi, bits))
        return out
    except OSError:
        return [(lo, hi, None) for lo, hi in ranges]
    finally:
        os.close(fd)


def filled_stretches(before: list[Range], after: list[Range], share: float = FILLED) -> list[tuple[int, int]]:
    """The HUGE_PAGE-aligned stretches of `after` (merged where adjacent) in which at least `share` of the pages are
    present now and were not before (pages outside every range of `before` were not; where either side's presence is
    unknown (None), a page of a range from before counts as present then, any page of a range now as present now)."""
    per = HUGE_PAGE // PAGE
    out: list[tuple[int, int]] = []
    for lo, hi, now in after:
        first, last = -(-lo // HUGE_PAGE) * HUGE_PAGE, hi // HUGE_PAGE * HUGE_PAGE
        if last <= first:
            continue
        pages = (last - first) // PAGE
        fresh = np.ones(pages, bool) if now is None else now[(first - lo) // PAGE:(last - lo) // PAGE].copy()
        for a, b, was in before:  # pages present then are not the load's
            s, e = max(a, first), min(b, last)
            if s < e:
                span = slice((s - first) // PAGE, (e - first) // PAGE)
                if was is None:
                    fresh[span] = False
                else:
                    fresh[span] &= ~was[(s - a) // PAGE:(e - a) // PAGE]
        full = fresh.reshape(-1, per).sum(1) >= share * per
        for i in np.flatnonzero(full):
            s = first + int(i) * HUGE_PAGE
            if out and out[-1][1] == s:
                out[-1] = (out[-1][0], s + HUGE_PAGE)
            else:
                out.append((s, s + HUGE_PAGE))
    return out


def _libc():
    """(madvise, malloc_trim) from the C library; None for one it lacks (malloc_trim is glibc's)."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None, None
    madvise, trim = getattr(libc, "madvise", None), getattr(libc, "malloc_trim", None)
    if madvise is not None:
        madvise.argtypes, madvise.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return madvise, trim


class HugePages:
    """with HugePages(): <load a model>  -- the memory the load filled, backed by huge pages after it.

    enabled False, or a system without transparent huge pages: nothing is done. `collapsed`: bytes now in huge pages;
    `advised`: bytes advised (collapsing can fail where memory is short: the stretch stays advised); `stretches`: the
    (start, end) addresses advised."""

    def __init__(self, enabled: bool = True):
        self.enabled = bool(enabled) and sys.platform.startswith("linux") and thp_mode() in ("always", "madvise")
        self.advised = self.collapsed = 0
        self.stretches: list[tuple[int, int]] = []
        self._before: list[Range] | None = None
        self._madvise = None

    def __enter__(self) -> "HugePages":
        if self.enabled:
            self._madvise, trim = _libc()
            if trim is not None:
                trim(0)  # freed heap pages leave: what the load reuses of them becomes present again, as its own
            try:
                self._before = with_presence(anonymous_ranges()) if self._madvise is not None else None
            except (OSError, ValueError):
                self._before = None
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None and self._before is not None:
            self.apply(self._before)

    def apply(self, before: list[Range]) -> int:
        """Advise and collapse the stretches filled since `before`; -> bytes collapsed."""
        madvise = self._madvise or _libc()[0]
        if madvise is None:
            return 0
        try:
            stretches = filled_stretches(before, with_presence(anonymous_ranges()))
        except (OSError, ValueError):
            return 0
        for start, end in stretches:
            if madvise(start, end - start, MADV_HUGEPAGE) == 0:
                self.advised += end - start
                self.stretches.append((start, end))
                if madvise(start, end - start, MADV_COLLAPSE) == 0:
                    self.collapsed += end - start
        return self.collapsed
