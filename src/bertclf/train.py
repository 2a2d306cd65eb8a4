"""Stage 4 — the training loop, on ``accelerate`` so the same code runs on CPU, GPU or many processes.

Read it top to bottom: build batches, optimizer and schedule; for each epoch train, score the dev set,
keep the best weights; stop early when the dev metric stops improving.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .batching import Collator, Encoded, LengthGroupedBatches
from .metrics import compute, headline
from .modeling import device_type, resolve_precision
from .predict import decide, predict_logits


@dataclass
class TrainResult:
    model: torch.nn.Module  # the best epoch's weights, plain (no autocast wrapper), on its device
    precision: str
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    train_seconds: float = 0.0
    samples_per_s: float = 0.0
    stopped_early: bool = False


def _optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW without decay on biases and LayerNorm weights (the BERT recipe); fused kernel where torch has one."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    try:
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    except (RuntimeError, TypeError):  # no fused kernel for this device or dtype
        return torch.optim.AdamW(groups, lr=lr)


def train(
    model: torch.nn.Module,
    train_encoded: Encoded,
    train_targets: torch.Tensor,
    dev_encoded: Encoded | None,
    dev_targets: np.ndarray | None,
    *,
    classes: list[str],
    multilabel: bool,
    pad_id: int,
    params,
    lr: float,
) -> TrainResult:
    """Fine-tune ``model`` with the hyperparameters of ``params`` (a :class:`TextClassifier`) at peak ``lr``."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import TorchDynamoPlugin
    from transformers import get_linear_schedule_with_warmup

    precision = resolve_precision(params.precision, device_type())
    # accelerate keeps process-wide state; a second fit() in one process may ask for another precision or
    # accumulation. The process group itself (PartialState) is kept, so multi-process runs are unaffected.
    AcceleratorState._reset_state()
    GradientState._reset_state()
    accelerator = Accelerator(
        mixed_precision="no" if precision == "fp32" else precision,
        gradient_accumulation_steps=params.grad_accum,
        # dynamic=True: one compiled graph serves every padded batch width instead of one per width.
        dynamo_plugin=TorchDynamoPlugin(backend="inductor", dynamic=True) if params.compile else None,
    )
    show = params.verbose and accelerator.is_main_process

    sampler = LengthGroupedBatches(train_encoded.lengths, params.batch_size, params.seed)
    loader = DataLoader(
        range(len(train_encoded.input_ids)),
        batch_sampler=sampler,
        collate_fn=Collator(train_encoded, train_targets, pad_id),
    )
    optimizer = _optimizer(model, lr, params.weight_decay)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    total_steps = math.ceil(len(loader) / params.grad_accum) * params.epochs * accelerator.num_processes
    scheduler = accelerator.prepare(
        get_linear_schedule_with_warmup(optimizer, int(params.warmup_ratio * total_steps), total_steps)
    )
    loss_fn = F.binary_cross_entropy_with_logits if multilabel else F.cross_entropy

    result = TrainResult(model=model, precision=precision)
    best_score, best_state, stale_epochs = -math.inf, None, 0
    for epoch in range(1, params.epochs + 1):
        sampler.set_epoch(epoch)
        model.train()
        started, seen, loss_sum = time.perf_counter(), 0, 0.0
        bar = tqdm(loader, desc=f"epoch {epoch}/{params.epochs}", disable=not show, file=sys.stderr, leave=False)
        for batch in bar:
            with accelerator.accumulate(model):
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                loss = loss_fn(logits.float(), batch["labels"])
                accelerator.backward(loss)
                if accelerator.sync_gradients and params.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), params.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            seen += len(batch["index"])
            loss_sum += loss.item() * len(batch["index"])
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        seconds = time.perf_counter() - started
        result.train_seconds += seconds
        row = {"epoch": epoch, "train_loss": loss_sum / max(seen, 1), "seconds": round(seconds, 2),
               "samples_per_s": round(seen * accelerator.num_processes / seconds, 2)}

        if dev_encoded is not None:
            # Every process scores the whole (small) dev set, so all agree on the best epoch without a reduce.
            logits = predict_logits(accelerator.unwrap_model(model), dev_encoded, pad_id)
            row["dev"] = headline(compute(dev_targets, decide(logits, multilabel), classes, multilabel))
            score = row["dev"][params.metric]
            if score > best_score:
                best_score, stale_epochs, result.best_epoch = score, 0, epoch
                best_state = {k: v.detach().clone() for k, v in accelerator.unwrap_model(model).state_dict().items()}
            else:
                stale_epochs += 1
        result.history.append(row)
        if show:
            dev = "  ".join(f"{k} {v:.4f}" for k, v in row.get("dev", {}).items())
            print(f"epoch {epoch}/{params.epochs}  loss {row['train_loss']:.4f}  {dev}  "
                  f"({seconds:.0f} s, {row['samples_per_s']:.0f} samples/s)", file=sys.stderr)
        if params.patience and stale_epochs >= params.patience:
            result.stopped_early = epoch < params.epochs
            break

    plain = accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    if best_state is not None:
        plain.load_state_dict(best_state)
    else:
        result.best_epoch = len(result.history)  # no dev set: the last epoch is the model
    result.model = plain.eval()
    total = sum(r["samples_per_s"] * r["seconds"] for r in result.history)
    result.samples_per_s = round(total / max(result.train_seconds, 1e-9), 2)
    accelerator.free_memory()
    return result
