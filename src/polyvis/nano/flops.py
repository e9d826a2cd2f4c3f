"""A run's cost per training step, measured: FLOPs of one forward + backward on a real batch."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from polyvis.config import Config


def step_flops(model_dir: str | Path, config: Config) -> int:
    """FLOPs (torch.utils.flop_counter) of one finetune step of the model in `model_dir` on the
    first batch `config`'s run draws (its seed's first epoch order): a forward with the images
    through the encoders, as at inference (a feature cache skips them in training), then the
    backward of the trainable parts. Counted, not estimated from a formula."""
    from torch.utils.flop_counter import FlopCounterMode

    from polyvis.data.collate import Collator
    from polyvis.data.dataset import ConversationDataset
    from polyvis.models.build import load_model
    from polyvis.train.data import EpochSampler, data_files
    from polyvis.train.stages import configure_stage

    tc = config.train
    model, processor = load_model(model_dir, dtype=None, device="cpu")
    configure_stage(model, tc)
    model.train()
    ds = ConversationDataset(
        data_files(config, "train"),
        processor,
        max_length=config.data.max_length,
        image_root=config.data.image_root,
    )
    order = list(EpochSampler(len(ds), tc.seed))[: tc.batch_size]
    batch = Collator(processor.tokenizer.pad_token_id)([ds[i] for i in order])
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels", "pixel_values")}
    answers = int((batch["labels"][:, 1:] != -100).sum())
    with FlopCounterMode(display=False) as counter:
        out = model(**inputs, num_items_in_batch=max(1, answers), answer_logits_only=True)
        out.loss.backward()
    return int(counter.get_total_flops())
