"""Many processes, one output: which chunks of the corpus this process embeds, and the two points where
the processes of one `maskae embed` wait for each other.

Chunk i belongs to rank i mod N. Every chunk is embedded exactly as one process would embed it (the same
texts in the same length-sorted batches), so N processes write the rows of one process bit for bit (on
the same kernels), the shards stay even however uneven the texts are, and a resumed run with another N
simply takes over the chunks that are missing. The processes come from `accelerate launch` / torchrun
(the environment says how many; rank 0 prepares and joins, the ranks wait for each other twice), or from
`--num-processes` (`launch_local`), where the launching process prepares and joins and the ranks it
starts only embed, so that no process group is needed and a failed rank is simply an exit code.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta

from ..errors import DataError

LOCAL_RANK, LOCAL_WORLD = "MASKAE_EMBED_RANK", "MASKAE_EMBED_WORLD"  # set by launch_local for its ranks
WAIT_LIMIT = timedelta(days=7)  # the final wait lasts as long as the slowest rank's share of the corpus


@dataclass
class Ranks:
    """This process's place among the processes embedding one corpus."""

    rank: int = 0
    world: int = 1
    launched_here: bool = False  # started by launch_local, whose process prepares and joins
    device: str | None = None  # this rank's own GPU under a launcher (None: the default device)

    @property
    def is_main(self) -> bool:
        """Whether this process prepares the output and joins it."""
        return self.rank == 0 and not self.launched_here

    def owns(self, chunk: int) -> bool:
        return chunk % self.world == self.rank

    def wait_for_everyone(self) -> None:
        if self.world > 1 and not self.launched_here:
            import torch.distributed as dist

            dist.barrier()


def current_ranks() -> Ranks:
    """The ranks set up by `accelerate launch`, torchrun or `launch_local` (one process when none is)."""
    import torch

    if LOCAL_RANK in os.environ:
        rank = int(os.environ[LOCAL_RANK])
        device = f"cuda:{rank % torch.cuda.device_count()}" if torch.cuda.is_available() else None
        return Ranks(rank, int(os.environ[LOCAL_WORLD]), launched_here=True, device=device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks()
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available(), timeout=WAIT_LIMIT)
    return Ranks(state.process_index, state.num_processes, device=str(state.device))


def launch_local(argv: list[str], processes: int) -> int:
    """Run `python -m maskae` with `argv` (an embed command line) as `processes` ranks on this host, threads
    shared out among them, once the caller prepared the output; returns 0 when every rank embedded its
    chunks, or raises one line naming the rank that failed (the others are stopped, and every chunk
    written stays for --resume). SIGTERM / Ctrl-C reach every rank, which stop after their current chunk;
    the exit code says so."""
    threads = max(1, (os.cpu_count() or 1) // processes)
    children, logs = [], []
    for rank in range(processes):
        env = {**os.environ, LOCAL_RANK: str(rank), LOCAL_WORLD: str(processes), "OMP_NUM_THREADS": str(threads)}
        logs.append(None if rank == 0 else tempfile.TemporaryFile())  # rank 0 draws the bar; others speak on failure
        children.append(subprocess.Popen([sys.executable, "-m", "maskae", *argv], env=env, stderr=logs[-1],
                                         start_new_session=True))
    forwarded, culprits = {}, []

    def forward(signum, frame):
        forwarded["signum"] = signum
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while any(child.poll() is None for child in children):
            culprits = culprits or [r for r, child in enumerate(children) if child.returncode not in (None, 0)]
            if culprits and "signum" not in forwarded:
                for child in children:  # chunks are written atomically: killing loses at most a chunk in flight
                    if child.poll() is None:
                        child.kill()
            time.sleep(0.05)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if "signum" in forwarded:
        return 128 + forwarded["signum"]
    culprits = culprits or [r for r, child in enumerate(children) if child.returncode != 0]
    if not culprits:
        return 0
    rank = culprits[0]
    raise DataError(f"rank {rank} of {processes} failed (exit {children[rank].returncode}){_last_line(logs[rank])}; "
                    "the chunks already written are kept: fix the cause and rerun with --resume.")


def _last_line(log) -> str:
    log.seek(0)
    lines = [line for line in log.read().decode(errors="replace").splitlines() if line.strip()]
    return f": {lines[-1].strip().removeprefix('maskae embed: error: ')}" if lines else ""

