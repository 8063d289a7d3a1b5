"""``python -m zerolm.pretrain --config FILE [key=value …]``: the entry point launchers call.

Works as one process (``python -m zerolm.pretrain``), under ``torchrun --nproc_per_node N -m zerolm.pretrain``,
under ``deepspeed --num_gpus N --module zerolm.pretrain`` (which adds ``--local_rank``) and under
``srun python -m zerolm.pretrain`` (Slurm variables).
"""

import sys

from zerolm.cli import main

if __name__ == "__main__":
    from zerolm.pretrain.distributed import exit_process

    exit_process(main(["pretrain", *[a for a in sys.argv[1:] if not a.startswith("--local_rank")]]))
