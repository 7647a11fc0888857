"""A full disk: nothing half-written, the high watermark stays, writes resume with space.

The disk is "full" through RLIMIT_FSIZE in a child process: a write crossing the
limit is cut short and the next one fails with EFBIG, like ENOSPC on a full device.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import asyncio, json, os, resource, signal, sys
    from pathlib import Path
    from shoal.broker.storage import LogConfig, OffsetStore, PartitionLog
    from shoal.client.errors import StorageFull
    from shoal.client.records import decode_fetch, encode_batch

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    root = Path(sys.argv[1])
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    out = {}

    async def main():
        plog = PartitionLog(root / "t-0", "t", 0, LogConfig(flush="always"))
        await plog.start()
        body = encode_batch([(None, b"x" * 1000, None, 1)])
        await plog.append(body)
        await plog.append(body)
        size = os.path.getsize(root / "t-0" / "00000000000000000000.log")
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + len(body) // 2, hard))
        try:
            await plog.append(body)
            out["append"] = "written"
        except StorageFull as exc:
            out["append"] = exc.code
        out["hw_when_full"] = plog.high_watermark
        out["size_when_full"] = os.path.getsize(root / "t-0" / "00000000000000000000.log")
        out["size_before"] = size

        store = OffsetStore(root / "__offsets")
        await store.start()
        await store.commit("g", [("t", 0, 1, "")])
        try:
            await store.commit("g", [("t", 0, 2, "m" * 10 * size)])
            out["commit"] = "written"
        except StorageFull as exc:
            out["commit"] = exc.code
        out["committed_when_full"] = store.get("g", "t", 0).offset

        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        out["after"] = (await plog.append(body)).base_offset
        await store.commit("g", [("t", 0, 3, "")])
        out["committed_after"] = store.get("g", "t", 0).offset
        out["records"] = [r.offset for r in decode_fetch("t", 0, plog.read(0, 1 << 20))]
        await store.stop()
        await plog.stop()

    asyncio.run(main())
    print(json.dumps(out))
    """
)


def test_a_full_disk_leaves_nothing_half_written(tmp_path):
    """StorageFull is raised, the files are cut back, and writing works again with space."""
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["append"] == "STORAGE_FULL"
    assert out["hw_when_full"] == 2
    assert out["size_when_full"] == out["size_before"]
    assert out["commit"] == "STORAGE_FULL"
    assert out["committed_when_full"] == 1
    assert out["after"] == 2
    assert out["committed_after"] == 3
    assert out["records"] == [0, 1, 2]
    assert "nothing written" in proc.stderr  # the WARNING of the failed append


ROLL_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, os, resource, sys
    from pathlib import Path
    from shoal.broker.storage import LogConfig, PartitionLog
    from shoal.client.errors import StorageFull
    from shoal.client.records import encode_batch

    out = {}

    def lowest_free_fd():
        fd = os.dup(0)
        os.close(fd)
        return fd

    async def main():
        plog = PartitionLog(Path(sys.argv[1]) / "t-0", "t", 0, LogConfig(flush="never", segment_bytes=1))
        await plog.start()
        body = encode_batch([(None, b"x" * 100, None, 1)])
        await plog.append(body)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free_fd(), hard))
        try:
            await plog.append(body)  # must roll: no descriptor for the new segment
            out["append"] = "written"
        except StorageFull as exc:
            out["append"] = exc.code
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        out["error"] = plog.error
        out["queued_bytes"] = plog.queued_bytes
        out["segments"] = plog.segment_count
        out["after"] = (await plog.append(body)).base_offset
        out["error_after"] = plog.error
        out["segments_after"] = plog.segment_count
        await plog.stop()

    asyncio.run(main())
    print(json.dumps(out))
    """
)


def test_a_roll_without_a_file_descriptor_is_storage_full_and_retried(tmp_path):
    """EMFILE creating the new segment refuses that append with STORAGE_FULL; the writer lives on
    and the next append rolls."""
    proc = subprocess.run(
        [sys.executable, "-c", ROLL_SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["append"] == "STORAGE_FULL"
    assert out["error"].startswith("[STORAGE_FULL] cannot open a new segment for t/0: Too many open files")
    assert (out["queued_bytes"], out["segments"]) == (0, 1)
    assert (out["after"], out["error_after"], out["segments_after"]) == (1, None, 2)
