"""``python -m zerolm.evals fewshot|bias [options]``: the entry point launchers call (one process,
``torchrun --nproc_per_node N -m zerolm.evals fewshot …``, ``accelerate launch -m zerolm.evals fewshot …``)."""

import sys

from zerolm.cli import main

if __name__ == "__main__":
    from zerolm.pretrain.distributed import exit_process

    exit_process(main(["eval", *sys.argv[1:]]))
