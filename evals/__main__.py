"""``python -m evals fewshot|bias [options]``: the entry point launchers call (one process,
``torchrun --nproc_per_node N -m evals fewshot …``, ``accelerate launch -m evals fewshot …``)."""

import sys

from zerolm.cli import main

if __name__ == "__main__":
    from pretrain.distributed import exit_process

    exit_process(main(["eval", *sys.argv[1:]]))
