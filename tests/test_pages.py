"""heron.runtime.pages: huge pages for the memory a load added, and nothing else."""
import sys

import numpy as np
import pytest

from heron.runtime import pages
from heron.runtime.pages import FILLED, HUGE_PAGE, PAGE, HugePages, anonymous_ranges, filled_stretches, thp_mode

MAPS = """\
55d0c0000000-55d0c0200000 r--p 00000000 fd:01 123 /usr/bin/python3.11
55d0c2000000-55d0c4000000 rw-p 00000000 00:00 0                          [heap]
7f0000000000-7f0000800000 rw-p 00000000 00:00 0
7f0001000000-7f0001400000 rw-s 00000000 00:05 77                         /dev/shm/x
7f0002000000-7f0002200000 rw-p 00001000 fd:01 124 /usr/lib/libfoo.so
7f0003000000-7f0003200000 r--p 00000000 00:00 0
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
"""


def test_anonymous_ranges_are_the_private_writable_anonymous_mappings_and_the_heap():
    assert anonymous_ranges(MAPS) == [(0x55d0c2000000, 0x55d0c4000000), (0x7f0000000000, 0x7f0000800000)]


def test_filled_stretches_are_whole_huge_pages_the_load_filled():
    M, per = HUGE_PAGE, HUGE_PAGE // PAGE

    def pages(n_huge: int, present=()):  # present: (first huge page, count) runs of present huge pages
        bits = np.zeros(n_huge * per, bool)
        for i, k in present:
            bits[i * per:(i + k) * per] = True
        return bits

    before = [(10 * M, 14 * M, pages(4, [(0, 2)])),  # a heap: its first two huge pages in use, the rest free
              (20 * M, 21 * M, None)]  # presence unknown: all of it counts as the application's
    heap_now = pages(8, [(0, 8)])
    heap_now[5 * per:5 * per + per // 2 - 1] = False  # the load filled just under half of the heap's sixth page
    after = [(10 * M, 18 * M, heap_now),  # the heap grew: its free pages and its new tail were filled
             (19 * M + PAGE, 23 * M, np.ones((4 * M - PAGE) // PAGE, bool)),  # new around the unknown range
             (30 * M, 31 * M + PAGE, None)]  # no presence known now: whole pages count
    assert filled_stretches(before, after) == [(12 * M, 18 * M), (21 * M, 23 * M), (30 * M, 31 * M)]
    assert filled_stretches(before, after, share=0.51) == [(12 * M, 15 * M), (16 * M, 18 * M), (21 * M, 23 * M),
                                                           (30 * M, 31 * M)]
    assert filled_stretches(after, after) == []


def test_thp_mode_reads_the_chosen_setting(tmp_path, monkeypatch):
    setting = tmp_path / "enabled"
    monkeypatch.setattr(pages, "THP_SETTING", setting)
    assert thp_mode() is None  # no such file: another OS, or no THP
    setting.write_text("always [madvise] never\n")
    assert thp_mode() == "madvise"
    setting.write_text("always madvise [never]\n")
    assert thp_mode() == "never"
    with HugePages() as hp:  # "never": nothing is asked of the system
        kept = np.ones(4 * HUGE_PAGE // 8)
    assert not hp.enabled and hp.collapsed == hp.advised == 0 and hp.stretches == [] and kept.sum() > 0
    with HugePages(enabled=False) as hp:
        pass
    assert not hp.enabled


@pytest.mark.skipif(not sys.platform.startswith("linux") or thp_mode() not in ("always", "madvise"),
                    reason="needs Linux with transparent huge pages (madvise or always)")
def test_memory_allocated_inside_is_collapsed_into_huge_pages_and_keeps_its_values():
    old = np.random.default_rng(0).standard_normal(2 * HUGE_PAGE // 8)  # mapped before: never touched
    with HugePages() as hp:
        new = np.random.default_rng(1).standard_normal(16 * HUGE_PAGE // 8)  # 32 MiB, its own mapping
        want = new.copy()
    if hp.advised and not hp.collapsed:
        pytest.skip("this kernel advises but cannot collapse (MADV_COLLAPSE needs Linux 6.1)")
    lo, hi = new.ctypes.data, new.ctypes.data + new.nbytes
    inside = sum(min(e, hi) - max(s, lo) for s, e in hp.stretches if s < hi and e > lo)
    assert inside >= new.nbytes - 2 * HUGE_PAGE  # all of it but the partial pages at its ends
    o_lo, o_hi = old.ctypes.data, old.ctypes.data + old.nbytes
    # memory held before is never the load's: a stretch may reach into it only where a new mapping beside it filled
    # the stretch's other pages (FILLED of them at least), never over the whole of it
    assert all(max(0, min(e, o_hi) - max(s, o_lo)) <= (1 - FILLED) * HUGE_PAGE for s, e in hp.stretches)
    np.testing.assert_array_equal(new, want)
    assert hp.collapsed == hp.advised >= inside


def _private_map(size: int):
    """An anonymous private mapping (nothing present until written) and its address."""
    import ctypes
    import mmap

    m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    return m, ctypes.addressof(ctypes.c_char.from_buffer(m))


def _covered(stretches, lo: int, hi: int) -> int:
    return sum(min(e, hi) - max(s, lo) for s, e in stretches if s < hi and e > lo)


@pytest.mark.skipif(not sys.platform.startswith("linux") or thp_mode() not in ("always", "madvise"),
                    reason="needs Linux with transparent huge pages (madvise or always)")
def test_memory_mapped_before_but_filled_inside_counts_and_memory_in_use_before_does_not():
    size = 8 * HUGE_PAGE
    empty, empty_at = _private_map(size)  # mapped before the load, nothing in it: what a freed heap looks like
    used, used_at = _private_map(size)
    used[:] = b"\1" * size  # in use before the load
    if pages.with_presence([(used_at, used_at + size)])[0][2] is None:
        pytest.skip("/proc/self/pagemap cannot be read here")
    with HugePages() as hp:
        empty[:] = b"\2" * size  # the load fills it
        used[:] = b"\3" * size  # and writes over memory the application had
    if hp.advised and not hp.collapsed:
        pytest.skip("this kernel advises but cannot collapse (MADV_COLLAPSE needs Linux 6.1)")
    assert _covered(hp.stretches, empty_at, empty_at + size) >= size - HUGE_PAGE  # the whole pages inside it
    assert _covered(hp.stretches, used_at, used_at + size) == 0
    assert empty[:size] == b"\2" * size and used[:size] == b"\3" * size
    empty.close(), used.close()
