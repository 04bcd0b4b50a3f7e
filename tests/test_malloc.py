"""glibc keeps freed multi-megabyte buffers (SIFT pyramids, big JPEG decodes) instead of unmapping them."""

import platform

import pytest

from kamim.malloc import keep_freed_memory


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_thresholds_apply_once_on_glibc():
    assert keep_freed_memory() is True
    assert keep_freed_memory() is True  # cached: a no-op after the first call
