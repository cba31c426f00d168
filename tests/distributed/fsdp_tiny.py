"""Train the continual prompt method with its base model sharded by FSDP2 (``fully_shard``) or replicated by DDP, in
plain torch on the CPU (gloo), and save the table:

    torchrun --nproc_per_node 2 tests/distributed/fsdp_tiny.py OUTPUT_DIR fsdp|ddp

accelerate turns FSDP on only on GPUs, so this is how the method's own parts are checked under sharding on a CPU:
the encoder's parameters become shards (``DTensor``) of the root FSDP unit, the table's rows are buffers (FSDP
shards parameters only, so every process keeps the whole table), and ``freeze_tasks`` runs between
``unshard()`` and ``reshard()``. ``tests/distributed/test_fsdp.py`` compares the two tables.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from peft import get_peft_model  # noqa: E402

from peft_continual.data.collate import ContinualPromptCollator  # noqa: E402
from peft_continual.tuners.continual_prompt import ContinualPromptConfig  # noqa: E402
from tests.conftest import SMOLLM2_TOKENIZER_DIR, build_tiny_model  # noqa: E402
from tests.distributed.train_tiny import TEMPLATES, training_rows  # noqa: E402


def main(output_dir: Path, mode: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel
    from transformers import AutoTokenizer

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    tokenizer = AutoTokenizer.from_pretrained(SMOLLM2_TOKENIZER_DIR)
    examples = training_rows(tokenizer)
    config = ContinualPromptConfig(templates=TEMPLATES, encoder_type="mlp").tokenize_tasknames(tokenizer)
    torch.manual_seed(0)
    model = get_peft_model(build_tiny_model("llama"), config)
    if mode == "fsdp":
        mesh = init_device_mesh("cpu", (world,))
        for layer in model.base_model.model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        trained = model
    else:
        trained = DistributedDataParallel(model)
    optimizer = torch.optim.AdamW([p for p in trained.parameters() if p.requires_grad], lr=1e-2)
    collate = ContinualPromptCollator(pad_token_id=tokenizer.pad_token_id)
    for step in range(4):  # 4 rows a step, each process its 4 / world of them
        rows = examples[step * 4 : (step + 1) * 4][rank::world]  # the tasks alternate: one task per process
        loss = trained(**collate(rows)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    sharded = type(model.base_model.prompt_encoder.head[-1].weight).__name__ == "DTensor"
    model.freeze_tasks()
    if rank == 0:
        model.save_pretrained(output_dir / "table")
        (output_dir / "encoder_was_sharded").write_text(str(sharded))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
