"""``python -m zerolm.finetune classify|sentiment --config FILE [key=value …]``: the entry point launchers call
(one process, ``torchrun --nproc_per_node N -m zerolm.finetune classify …``, the deepspeed launcher, srun)."""

import sys

from zerolm.cli import main

if __name__ == "__main__":
    from zerolm.pretrain.distributed import exit_process

    exit_process(main(["finetune", *[a for a in sys.argv[1:] if not a.startswith("--local_rank")]]))
