"""A stand-in for SLURM's `srun --nodes=N --ntasks-per-node=1 CMD...` on one machine: CMD once per "node", all at
once, each with its own home (so its own cache dir), SLURM_NODEID and SLURM_PROCID, as separate nodes would run
it; the first failure stops the others (--kill-on-bad-exit). The tests put it on PATH as `srun`."""
import os
import subprocess
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    options, command = [], list(argv)
    while command and command[0].startswith("--"):
        options.append(command.pop(0))
    nodes = int(next(o.split("=", 1)[1] for o in options if o.startswith("--nodes=")))
    homes = Path(os.environ["FAKE_SRUN_HOMES"])
    procs = []
    for node in range(nodes):
        home = homes / f"node-{node}"
        home.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "HOME": str(home), "SLURM_NODEID": str(node), "SLURM_PROCID": str(node)}
        env.pop("FOURTIER_CACHE", None)
        procs.append(subprocess.Popen(command, env=env))
    while True:
        codes = [p.poll() for p in procs]
        if any(c not in (None, 0) for c in codes):
            for p in procs:
                if p.poll() is None:
                    p.kill()
            return next(c for c in codes if c not in (None, 0))
        if all(c == 0 for c in codes):
            return 0
        time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
