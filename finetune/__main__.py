"""``python -m finetune classify|sentiment --config FILE [key=value …]``: the entry point launchers call
(one process, ``torchrun --nproc_per_node N -m finetune classify …``, the deepspeed launcher, srun)."""

import sys

from zerolm.cli import main

if __name__ == "__main__":
    from pretrain.distributed import exit_process

    exit_process(main(["finetune", *[a for a in sys.argv[1:] if not a.startswith("--local_rank")]]))
