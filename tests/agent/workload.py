"""A stateful process for checkpoint tests: a counter, a memory block with a known hash, a marker.

    python3 workload.py STATUS_FILE MEGABYTES MARKER

Holds MEGABYTES of random data and the MARKER string in memory; every 50 ms increments its
counter and writes {"counter", "hash", "hashedAt", "pid"} to STATUS_FILE (write, then rename; no
file stays open, so a checkpoint never holds a descriptor on the host's files). The hash is
recomputed from memory each round, so after a restore it proves the memory came back intact.
Stdio is moved to /dev/null first: in a container that is the container's own /dev/null.
"""

import hashlib
import json
import os
import sys
import time


def main() -> None:
    status_file, megabytes, marker = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    block = bytearray(os.urandom(megabytes << 20))
    held = [marker.encode() * 64]
    counter = 0
    tmp = status_file + ".tmp"
    while True:
        counter += 1
        # Hashing a large block every round would dominate the loop: small blocks are hashed
        # every round, large ones every 20th; `hashedAt` says which round the hash is from.
        if counter % 20 == 1 or megabytes <= 16:
            digest, hashed_at = hashlib.sha256(block).hexdigest(), counter
        status = {
            "counter": counter,
            "hash": digest,
            "hashedAt": hashed_at,
            "pid": os.getpid(),
            "marker": len(held[0]),
        }
        with open(tmp, "w") as f:
            json.dump(status, f)
        os.rename(tmp, status_file)
        time.sleep(0.05)


if __name__ == "__main__":
    main()
