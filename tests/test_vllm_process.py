"""vLLM's process-wide leftovers (no vLLM needed): stale CPU shared-memory segments of killed engines."""

from __future__ import annotations

import mmap
import os

from rlkit.rollout.vllm_process import mapped_shm_files, remove_stale_cpu_shm


def _segment(folder, name: str) -> str:
    path = os.path.join(folder, name)
    with open(path, "wb") as fh:
        fh.write(b"\0" * 4096)
    return path


def test_only_this_ranks_unmapped_segments_are_removed(tmp_path):
    # vLLM's names: "<ident>-<group>-[ranks]-cpushm_<rank>" (the ident is empty with external_launcher)
    stale = _segment(tmp_path, "-tp:0-[0-1]-cpushm_1")
    live = _segment(tmp_path, "run2-tp:0-[0-1]-cpushm_1")
    peer = _segment(tmp_path, "-tp:0-[0-1]-cpushm_0")
    other = _segment(tmp_path, "psm_1234")
    with open(live, "r+b") as fh, mmap.mmap(fh.fileno(), 4096) as _mapping:
        # this process maps `live`, as a running engine maps its own segment
        mapped, complete = mapped_shm_files(str(tmp_path))
        assert live in mapped and stale not in mapped
        removed = remove_stale_cpu_shm(1, shm_dir=str(tmp_path))
    assert removed == [stale]
    assert not os.path.exists(stale)
    assert os.path.exists(live) and os.path.exists(peer) and os.path.exists(other)


def test_a_shm_dir_with_brackets_in_its_name_is_globbed_literally(tmp_path):
    folder = tmp_path / "[0-1]"
    folder.mkdir()
    stale = _segment(folder, "-tp:0-[0-1]-cpushm_0")
    assert remove_stale_cpu_shm(0, shm_dir=str(folder)) == [stale]
    assert remove_stale_cpu_shm(0, shm_dir=str(folder)) == []
