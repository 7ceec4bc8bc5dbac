"""Several processes from one stage command: with `runtime.nproc_per_node` x `runtime.nnodes` above 1, a
stage that splits its work (features, embed, caption with an hf VLM, align, finetune, evaluate, zeroshot) runs
itself again under torchrun (`torch.distributed.run`), so `dvc repro`, `dvc exp run` and the queue launch it as
they launch any stage.

- one node: `torchrun --standalone --nproc-per-node N` (a free local port, so stages never collide);
- several nodes, `launcher: srun`: inside a SLURM allocation, `srun` starts one torchrun per node, which meet
  at the first node (c10d rendezvous, id = the job id): `dvc repro` itself runs once, on the first node;
- several nodes, `launcher: torchrun`: this node joins `rdzv_endpoint`; every other node runs the same stage
  command at the same time (README, "On several GPUs and nodes").

A stage already under a launcher (LOCAL_RANK set, e.g. started by hand with torchrun) runs as it is.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

from fourtier.config.runtime import RuntimeParams
from fourtier.errors import FourtierError, ParamsError


def job_port(job_id: str) -> int:
    """The rendezvous port of SLURM job `job_id` on its first node: 15000 + the id's last four digits, as
    PyTorch Lightning picks it, so that two jobs sharing a node do not meet at one port (a fixed 29500 would)."""
    return 15000 + int(job_id[-4:])


def under_launcher() -> bool:
    return "LOCAL_RANK" in os.environ


def torchrun_command(rt: RuntimeParams, argv: list[str]) -> list[str]:
    """The command that runs `python argv...` as rt.nproc_per_node processes on each of rt.nnodes nodes."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={rt.nproc_per_node}",
                "--max-restarts=0"]
    if rt.nnodes == 1 and not rt.rdzv_endpoint:
        return [*torchrun, "--standalone", *argv]
    if rt.launcher == "srun":
        job = os.environ.get("SLURM_JOB_ID")
        if not job:
            raise ParamsError("params.yaml: 'runtime.launcher' is srun, but this is not inside a SLURM allocation "
                              "(SLURM_JOB_ID is unset): run `dvc repro` from an sbatch script (README, \"On several "
                              "GPUs and nodes\") or use launcher: torchrun")
        if shutil.which("srun") is None:
            raise ParamsError("params.yaml: 'runtime.launcher' is srun, but there is no srun command on this host")
        endpoint = rt.rdzv_endpoint or f"{socket.gethostname()}:{job_port(job)}"
        # newer SLURM no longer passes the allocation's --cpus-per-task on to srun: say it again
        cpus = [f"--cpus-per-task={os.environ['SLURM_CPUS_PER_TASK']}"] if os.environ.get("SLURM_CPUS_PER_TASK") else []
        return ["srun", f"--nodes={rt.nnodes}", f"--ntasks={rt.nnodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1",
                *cpus, *torchrun, f"--nnodes={rt.nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}",
                f"--rdzv-id=fourtier-{job}", *argv]
    run_id = os.environ.get("FOURTIER_RDZV_ID", "fourtier")
    return [*torchrun, f"--nnodes={rt.nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={rt.rdzv_endpoint}",
            f"--rdzv-id={run_id}", *argv]


def relaunch(rt: RuntimeParams, stage: str) -> None:
    """Run this script again under torchrun when the params ask for several processes, and exit with its
    result; return at once with one process or when already under a launcher."""
    if rt.world == 1 or under_launcher():
        return
    command = torchrun_command(rt, [sys.argv[0], *sys.argv[1:]])
    print(f"{stage}: {rt.world} processes ({rt.nnodes} node{'s' if rt.nnodes > 1 else ''} x {rt.nproc_per_node}) "
          f"through {'srun + ' if command[0] == 'srun' else ''}torchrun", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    code = subprocess.run(command, env=env).returncode
    if code != 0:
        raise FourtierError(f"{stage}: the run on {rt.world} processes failed (exit code {code}); the failing rank's "
                            "error is above. Run the same command again: finished work (batches of m, epochs) is "
                            "kept and resumed")
    sys.exit(0)


def threads_per_process(workers: int) -> int:
    """CPU threads (and decoding processes) for each of this node's ranks: runtime.workers shared among them."""
    return max(1, workers // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def extra_rank(stage: str) -> bool:
    """True in a rank other than 0 of a stage that runs as one process (caption, embed) when it was started
    under torchrun by hand: that rank says so and does nothing, so no question is asked (and billed) twice."""
    rank = int(os.environ.get("RANK", "0"))
    if rank > 0:
        print(f"{stage}: runs as one process (rank 0); rank {rank} has nothing to do", flush=True)
    return rank > 0
