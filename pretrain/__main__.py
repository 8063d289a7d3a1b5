"""``python -m pretrain --config FILE [key=value …]``: the entry point launchers call.

Works as one process (``python -m pretrain``), under ``torchrun --nproc_per_node N -m pretrain``,
under ``deepspeed --num_gpus N --module pretrain`` (which adds ``--local_rank``) and under
``srun python -m pretrain`` (Slurm variables).
"""

import sys

from zerolm.cli import main

if __name__ == "__main__":
    from pretrain.distributed import exit_process

    exit_process(main(["pretrain", *[a for a in sys.argv[1:] if not a.startswith("--local_rank")]]))
