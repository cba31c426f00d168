"""A run started by ``accelerate launch`` or ``torchrun`` leaves its process group before the interpreter exits."""

import torch.distributed as dist

from peft_continual.experiments.cli import run_recipe
from peft_continual.processes import distributed


def test_a_recipe_destroys_the_process_group_it_ran_in(tmp_path):
    """A one-process gloo group (a file store): when ``run_recipe`` returns, the group is gone. Left to the exit, gloo
    can abort a process that finished its work (a 2-process CI run ended with SIGABRT after its last step)."""
    ran_in_a_group = []

    def recipe_main():
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
        ran_in_a_group.append(distributed())

    run_recipe(recipe_main, [], [], parse=lambda dataclass_types, argv: ())
    assert ran_in_a_group == [True]
    assert not dist.is_initialized()
