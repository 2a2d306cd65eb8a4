"""Stage 4 — the training loop, on ``accelerate`` so the same code runs on CPU, GPU or many processes.

Read it top to bottom: build batches, optimizer and schedule; for each epoch train, score the dev set,
keep the best weights; stop early when the dev metric stops improving.
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import get_ema_multi_avg_fn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import checkpoints
from .batching import Collator, Encoded, LengthGroupedBatches
from .checkpoints import Checkpointing
from .metrics import compute, headline
from .modeling import device_type, process_state, release_memory, resolve_precision
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


_LAYER = re.compile(r"\.layer\.(\d+)\.")  # encoder block index in BERT, RoBERTa, MPNet and DistilBERT parameter names


def layer_rate_factors(model: torch.nn.Module, decay: float) -> dict[str, float]:
    """Each parameter's share of the peak rate under layer-wise decay (Clark et al. 2020, ELECTRA): the head, pooler
    and anything else above the encoder 1, block i of L decay ** (L - i), the embeddings decay ** (L + 1).
    The lower layers hold general language knowledge that fine-tuning should move least."""
    layers = model.config.num_hidden_layers
    factors = {}
    for name, _ in model.named_parameters():
        block = _LAYER.search(name)
        depth = int(block.group(1)) + 1 if block else 0 if "embeddings" in name else layers + 1
        factors[name] = decay ** (layers + 1 - depth)
    return factors


def _optimizer(model: torch.nn.Module, lr: float, weight_decay: float, layer_lr_decay: float) -> torch.optim.Optimizer:
    """AdamW without decay on biases and LayerNorm weights (the BERT recipe), one group per rate under layer-wise
    decay; fused kernel where torch has one."""
    factors = layer_rate_factors(model, layer_lr_decay)
    groups: dict[tuple[float, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups.setdefault((factors[name], param.ndim >= 2), []).append(param)
    param_groups = [{"params": params, "lr": lr * factor, "weight_decay": weight_decay if decays else 0.0}
                    for (factor, decays), params in sorted(groups.items(), key=lambda kv: (-kv[0][0], not kv[0][1]))]
    try:
        return torch.optim.AdamW(param_groups, lr=lr, fused=True)
    except (RuntimeError, TypeError):  # no fused kernel for this device or dtype
        return torch.optim.AdamW(param_groups, lr=lr)


def label_loss(multilabel: bool, class_weights: torch.Tensor | None, smoothing: float) -> Callable:
    """The loss against the labels: cross-entropy, or per-label BCE for multi-label, weighted per class (BCE:
    ``pos_weight``). ``smoothing`` (Szegedy et al. 2016) moves that share of each target to the uniform
    distribution, or for multi-label toward 0.5 (a 1 becomes 1 - smoothing/2): the model stops pushing its
    logits toward certainty on the training texts, the usual regulariser of small fine-tuning sets."""
    if not multilabel:
        return functools.partial(F.cross_entropy, weight=class_weights, label_smoothing=smoothing)

    def smoothed_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, targets * (1 - smoothing) + smoothing / 2, pos_weight=class_weights)
    return smoothed_bce


def distillation_loss(logits: torch.Tensor, teacher: torch.Tensor, temperature: float, multilabel: bool) -> torch.Tensor:
    """How far the student's softened outputs are from the teacher's (Hinton et al. 2015): KL divergence of the
    softmaxes at ``temperature``, or for multi-label the BCE against the teacher's sigmoids; times the squared
    temperature, so the gradients keep the size of the label loss's whatever the temperature."""
    student, teacher = logits / temperature, teacher / temperature
    if multilabel:
        loss = F.binary_cross_entropy_with_logits(student, torch.sigmoid(teacher))
    else:
        loss = F.kl_div(F.log_softmax(student, dim=-1), F.log_softmax(teacher, dim=-1), log_target=True,
                        reduction="batchmean")
    return loss * temperature**2


class WeightAverage:
    """An exponential moving average of the weights over the optimizer steps (Polyak averaging, the "EMA" of
    Tarvainen & Valpola 2017 and timm's ``ModelEma``). Late in fine-tuning the steps wander around a minimum; their
    average sits nearer its middle than any one step, which often scores higher on unseen texts (on TREC it did not:
    README). ``decay`` sets its memory, about ``1 / (1 - decay)`` steps; step t uses at most ``(1 + t) / (10 + t)``
    (timm's warm-up), so the pretrained weights and the untrained head the average starts from are soon forgotten."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay, self.updates = decay, 0
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.average = [p.detach().clone() for p in self.params]

    def update(self) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        get_ema_multi_avg_fn(decay)(self.average, self.params, None)  # torch's EMA step over lists of tensors

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The model holds the averaged weights inside the block (to score or save them), its own after it."""
        own = [p.detach().clone() for p in self.params]
        self.copy_into_model()
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.params, own)

    @torch.no_grad()
    def copy_into_model(self) -> None:
        torch._foreach_copy_(self.params, self.average)

    # accelerate saves and restores it with the rest of a checkpoint (register_for_checkpointing)
    def state_dict(self) -> dict:
        return {"updates": self.updates, "average": self.average}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        self.updates = state["updates"]
        torch._foreach_copy_(self.average, [t.to(a.device) for a, t in zip(self.average, state["average"], strict=True)])


def _dev_logits(accelerator, model: torch.nn.Module, dev: Encoded, pad_id: int) -> np.ndarray:
    """Per-text dev logits (windows pooled). Each process scores its share of the rows (rank::N); the shares
    are gathered, so every process holds all logits and all agree on the best epoch."""
    world, rank = accelerator.num_processes, accelerator.process_index
    if world == 1:
        return dev.pool(predict_logits(model, dev, pad_id))
    from accelerate.utils import gather_object

    rows = list(range(rank, len(dev.input_ids), world))
    mine = predict_logits(model, Encoded([dev.input_ids[i] for i in rows], 0), pad_id) if rows else None
    shares = gather_object([(rows, mine)])
    width = next(logits.shape[1] for _, logits in shares if logits is not None)
    out = np.empty((len(dev.input_ids), width), dtype=np.float32)
    for share_rows, logits in shares:
        if share_rows:
            out[share_rows] = logits
    return dev.pool(out)


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
    epochs: int,
    batch_tokens: int | None = None,
    checkpointing: Checkpointing | None = None,
    fingerprint: dict | None = None,
    class_weights: torch.Tensor | None = None,
    teacher_logits: torch.Tensor | None = None,
    labelled: torch.Tensor | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Fine-tune ``model`` for ``epochs`` with the hyperparameters of ``params`` (a :class:`TextClassifier`) at
    peak ``lr``, with training batches of at most ``batch_tokens`` padded tokens (None: no cap).

    With ``checkpointing``, the loop saves its whole state at epoch ends (and every N steps) and can
    resume from it; ``fingerprint`` (settings and data hashes) guards against resuming a different run.
    ``class_weights`` weight the loss per class (cross-entropy) or per label (BCE ``pos_weight``).
    ``teacher_logits`` (one row per training row): a teacher's outputs, matched with ``params.distill_weight`` of
    the loss (see :func:`distillation_loss`). ``labelled`` (bool per training row, None: all): rows without a
    label (their targets are placeholders) learn from the teacher alone; the label loss averages over a batch's
    labelled rows.
    ``on_epoch`` receives each epoch's record (loss, speed, dev metrics) as soon as it is known; an
    exception it raises stops training (a tuner's pruning).
    """
    from accelerate import Accelerator
    from accelerate.data_loader import prepare_data_loader
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import TorchDynamoPlugin
    from transformers import get_linear_schedule_with_warmup

    precision = resolve_precision(params.precision, device_type())
    # accelerate keeps process-wide state; a second fit() in one process may ask for another precision or
    # accumulation. The process group itself (PartialState) is kept, so multi-process runs are unaffected.
    AcceleratorState._reset_state()
    GradientState._reset_state()
    process_state()  # joins the process group (gloo on CPU, NCCL on GPUs) when launched by torchrun/accelerate
    accelerator = Accelerator(
        cpu=device_type() == "cpu",
        mixed_precision="no" if precision == "fp32" else precision,
        gradient_accumulation_steps=params.grad_accum,
        # dynamic=True: one compiled graph serves every padded batch width instead of one per width.
        dynamo_plugin=TorchDynamoPlugin(backend="inductor", dynamic=True) if params.compile else None,
    )
    show = params.verbose and accelerator.is_main_process

    # batch_size is global: each process takes its share of every batch (see LengthGroupedBatches), so
    # 1 or N processes make the same optimizer steps on the same texts.
    sampler = LengthGroupedBatches(train_encoded.lengths, params.batch_size, params.seed,
                                   num_replicas=accelerator.num_processes, rank=accelerator.process_index,
                                   max_tokens=batch_tokens)
    loader = DataLoader(
        range(len(train_encoded.input_ids)),
        batch_sampler=sampler,
        collate_fn=Collator(train_encoded, train_targets, pad_id),
        # Its own generator: creating an iterator must not draw from the global RNG that dropout uses,
        # or a resumed run (whose iterator starts mid-epoch) would see different dropout masks.
        generator=torch.Generator().manual_seed(params.seed),
    )
    optimizer = _optimizer(model, lr, params.weight_decay, params.layer_lr_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    # The sampler already shards; accelerate's loader wrapper only moves batches to the device and tells
    # gradient accumulation where an epoch ends, so it is told this loader is one process's whole share.
    loader = prepare_data_loader(loader, accelerator.device, num_processes=1, process_index=0, put_on_device=True)
    total_steps = sum(math.ceil(sampler.num_batches(e) / params.grad_accum) for e in range(1, epochs + 1))
    # Not prepared: accelerate would step it once per process. Stepped on each optimizer step below and
    # registered so that checkpoints carry it.
    scheduler = get_linear_schedule_with_warmup(optimizer, int(params.warmup_ratio * total_steps), total_steps)
    accelerator.register_for_checkpointing(scheduler)
    average = WeightAverage(model, params.ema_decay) if params.ema_decay else None
    if average:
        accelerator.register_for_checkpointing(average)
    if class_weights is not None:
        class_weights = class_weights.to(accelerator.device)
    loss_fn = label_loss(multilabel, class_weights, params.label_smoothing)
    if teacher_logits is not None:
        teacher_logits = teacher_logits.to(accelerator.device)
    if labelled is not None:
        labelled = labelled.to(accelerator.device)

    progress = {
        "epoch": 1, "batches_done": 0, "step": 0, "finished": False, "history": [], "best_epoch": 0,
        "best_score": -math.inf, "stale_epochs": 0, "epoch_seen": 0, "epoch_loss_sum": 0.0, "epoch_seconds": 0.0,
        "fingerprint": fingerprint or {},
    }
    best = checkpoints.BestWeights()
    if checkpointing and checkpointing.resume_from:
        path = checkpoints.latest(checkpointing.resume_from)
        progress = checkpoints.load(accelerator, path, fingerprint or {}, best, type(params).default_params())
        if show:
            print(f"resuming from {path} (epoch {progress['epoch']}, batch {progress['batches_done']})", file=sys.stderr)

    def checkpoint() -> None:
        if checkpointing:
            checkpoints.save(accelerator, checkpointing.directory, progress, best, checkpointing.keep)

    for epoch in range(progress["epoch"], epochs + 1):
        if progress["finished"]:
            break
        model.train()
        done = progress["batches_done"]
        batches = accelerator.skip_first_batches(loader, done) if done else loader
        # accelerate's loaders pass their own epoch counter to the sampler on every iteration; a loader made
        # to skip into a resumed epoch starts that counter at 0, so set it, or the batch order would differ.
        batches.set_epoch(epoch)
        sampler.set_epoch(epoch)
        bar = tqdm(batches, desc=f"epoch {epoch}/{epochs}", initial=done, total=len(loader),
                   disable=not show, file=sys.stderr, leave=False)
        started = time.perf_counter()
        for batch in bar:
            with accelerator.accumulate(model):
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                if labelled is None:
                    loss = loss_fn(logits.float(), batch["labels"])
                else:
                    mask = labelled[batch["index"]]
                    loss = loss_fn(logits.float()[mask], batch["labels"][mask]) if mask.any() else logits.new_zeros((), dtype=torch.float32)
                if teacher_logits is not None:
                    soft = distillation_loss(logits.float(), teacher_logits[batch["index"]], params.distill_temperature, multilabel)
                    loss = (1 - params.distill_weight) * loss + params.distill_weight * soft
                accelerator.backward(loss)
                if accelerator.sync_gradients and params.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), params.max_grad_norm)
                optimizer.step()
                if accelerator.sync_gradients:
                    scheduler.step()
                    if average:
                        average.update()
                optimizer.zero_grad(set_to_none=True)
            rows = len(batch["index"])
            progress["batches_done"] += 1
            progress["epoch_seen"] += rows
            progress["epoch_loss_sum"] += loss.item() * rows
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
            release_memory()
            if accelerator.sync_gradients:
                progress["step"] += 1
                every = checkpointing.every_steps if checkpointing else 0
                if every and progress["step"] % every == 0 and progress["batches_done"] < len(loader):
                    progress["epoch_seconds"] += time.perf_counter() - started
                    checkpoint()
                    started = time.perf_counter()
        progress["epoch_seconds"] += time.perf_counter() - started

        # Summed over processes: the loss is the mean over every row of the epoch, the speed counts all rows.
        loss_sum, seen = accelerator.reduce(
            torch.tensor([progress["epoch_loss_sum"], progress["epoch_seen"]], dtype=torch.float64, device=accelerator.device),
            reduction="sum",
        ).tolist()
        seconds = progress["epoch_seconds"]
        row = {"epoch": epoch, "train_loss": loss_sum / max(seen, 1), "seconds": round(seconds, 2),
               "samples_per_s": round(seen / max(seconds, 1e-9), 2)}
        if dev_encoded is not None:
            with average.swapped_in() if average else contextlib.nullcontext():  # the average is what dev scores
                logits = _dev_logits(accelerator, accelerator.unwrap_model(model), dev_encoded, pad_id)
                release_memory(now=True)  # the dev pass's freed batches would otherwise stay resident into the next epoch
                row["dev"] = headline(compute(dev_targets, decide(logits, multilabel), classes, multilabel))
                score = row["dev"][params.metric]
                if score > progress["best_score"]:
                    progress.update(best_score=score, stale_epochs=0, best_epoch=epoch)
                    best.save(accelerator.unwrap_model(model))
                else:
                    progress["stale_epochs"] += 1
        progress["history"].append(row)
        if on_epoch:
            on_epoch(row)
        if show:
            dev = "  ".join(f"{k} {v:.4f}" for k, v in row.get("dev", {}).items())
            print(f"epoch {epoch}/{epochs}  loss {row['train_loss']:.4f}  {dev}  "
                  f"({seconds:.0f} s, {row['samples_per_s']:.0f} samples/s)", file=sys.stderr)
        stop = bool(params.patience) and progress["stale_epochs"] >= params.patience
        progress.update(epoch=epoch + 1, batches_done=0, epoch_seen=0, epoch_loss_sum=0.0, epoch_seconds=0.0,
                        finished=stop or epoch == epochs)
        checkpoint()

    history = progress["history"]
    result = TrainResult(model=model, precision=precision, history=history)
    result.stopped_early = len(history) < epochs
    plain = accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    if best.saved:
        best.load_into(plain)
        result.best_epoch = progress["best_epoch"]
    else:
        result.best_epoch = len(history)  # no dev set: the last epoch is the model
        if average:
            average.copy_into_model()
    best.close()
    result.model = plain.eval()
    result.train_seconds = sum(r["seconds"] for r in history)
    total = sum(r["samples_per_s"] * r["seconds"] for r in history)
    result.samples_per_s = round(total / max(result.train_seconds, 1e-9), 2)
    accelerator.free_memory()
    return result
