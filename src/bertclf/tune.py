"""Hyperparameter search on Optuna: every trial is one ordinary ``TextClassifier.fit``.

The study lives in a real database (SQLite in the output directory by default, any SQLAlchemy URL
otherwise), so a rerun with the same output resumes it and several machines can share one study. The
first trial of a new study is the defaults, so the report says plainly whether tuning beat them. Trials
report their dev metric after every epoch and unpromising ones are pruned (median rule). A killed run
loses at most its running trial: on restart that trial is marked failed and the search continues.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from collections.abc import Sequence

import yaml

from .errors import BertclfError

STUDY_FILE = "study.db"
BEST_YAML = "best.yaml"
MODEL_DIR = "model"
TUNED = ("lr", "batch_size", "epochs", "warmup_ratio", "weight_decay", "layer_lr_decay", "label_smoothing", "ema_decay",
         "max_length", "class_weight")


def default_space(defaults: dict, p99_tokens: int, imbalance: float, model_max: int, multilabel: bool) -> dict:
    """Ranges around the recipe's defaults; max length and class weighting only where they can matter.

    Multi-label runs leave class weighting out: BCE ``pos_weight`` = negatives / positives cut GoEmotions' dev
    macro-F1 from 0.369 to 0.162 in a 2-epoch pilot (bench/multilabel_pilot.py), so trials spent on it are wasted.

    A space maps a parameter to ``{"low", "high", "log"?}`` (float or int range), a list (categorical)
    or a single value (fixed).
    """
    lr = defaults["lr"]
    space = {
        "lr": {"low": lr / 5, "high": lr * 3, "log": True},
        "batch_size": [16, 32, 64],
        "epochs": {"low": 2, "high": max(5, defaults["epochs"])},
        "warmup_ratio": {"low": 0.0, "high": 0.2},
        "weight_decay": {"low": 0.0, "high": 0.1},
    }
    lengths_worth_trying = [n for n in (128, 256, 512) if n <= model_max]
    if p99_tokens > 128 and len(lengths_worth_trying) > 1:  # shorter texts are never cut: nothing to choose
        space["max_length"] = lengths_worth_trying
    if imbalance > 1.5 and not multilabel:
        space["class_weight"] = ["none", "balanced"]
    return space


def load_space(path: str, base: dict) -> dict:
    """A YAML search space; entries replace the defaults' (a value fixes a parameter)."""
    try:
        with open(path, encoding="utf-8") as fh:
            loaded = yaml.safe_load(fh) or {}
    except FileNotFoundError:
        raise BertclfError(f"{path}: no such search-space file") from None
    except yaml.YAMLError:
        raise BertclfError(f"{path}: invalid YAML; fix the syntax") from None
    if not isinstance(loaded, dict):
        raise BertclfError(f"{path}: expected a mapping like 'lr: {{low: 1e-5, high: 1e-4, log: true}}'")
    space = {str(k).replace("-", "_"): v for k, v in loaded.items()}
    unknown = sorted(set(space) - set(TUNED))
    if unknown:
        raise BertclfError(f"{path}: cannot search {unknown}; searchable: {', '.join(TUNED)}")
    for name, spec in space.items():
        if isinstance(spec, dict):
            if set(spec) - {"low", "high", "log"} or not {"low", "high"} <= set(spec):
                raise BertclfError(f"{path}: {name} needs 'low' and 'high' (and optionally 'log: true')")
            try:
                low, high = float(spec["low"]), float(spec["high"])
            except (TypeError, ValueError):
                raise BertclfError(f"{path}: {name} low/high must be numbers") from None
            if not low < high or (spec.get("log") and low <= 0):
                raise BertclfError(f"{path}: {name} needs 0 < low < high for a log range, low < high otherwise")
        elif isinstance(spec, list) and not spec:
            raise BertclfError(f"{path}: {name} lists no values")
    return {**base, **space}


def suggest(trial, space: dict) -> dict:
    """One configuration from ``space``; ints stay ints (epochs, batch size), floats floats."""
    chosen = {}
    for name, spec in space.items():
        if isinstance(spec, dict):
            low, high, log = spec["low"], spec["high"], bool(spec.get("log", False))
            if name in ("epochs", "batch_size", "max_length"):
                chosen[name] = trial.suggest_int(name, int(low), int(high), log=log)
            else:
                chosen[name] = trial.suggest_float(name, float(low), float(high), log=log)
        elif isinstance(spec, list):
            chosen[name] = trial.suggest_categorical(name, spec)
        else:
            chosen[name] = spec
    return chosen


@dataclasses.dataclass
class TuneResult:
    study_name: str
    storage: str
    best_value: float
    best_params: dict
    default_value: float | None
    trials: int
    best_yaml: str
    model_dir: str | None


def tune(
    train_texts: list[str],
    train_labels: list,
    base: dict,
    output: str,
    *,
    dev: tuple[list[str], list] | None = None,
    test: tuple[list[str], list] | None = None,
    trials: int | None = None,
    budget_s: float | None = None,
    storage: str | None = None,
    study_name: str = "bertclf",
    space_file: str | None = None,
    data_info: dict | None = None,
    extra_record: dict | None = None,
    verbose: bool = True,
) -> TuneResult:
    """Search hyperparameters for ``base`` (TextClassifier params) and keep the best model in OUTPUT/model.

    Stops when the study holds ``trials`` finished trials or this run has used what is left of ``budget_s``
    (the seconds spent by earlier runs of the same study count), whichever comes first; no new trial starts
    after that, the running one finishes.
    """
    import optuna

    from .estimator import TextClassifier, default_epochs, default_lr
    from .modeling import load_tokenizer, resolve_max_length, resolve_model
    from .data import check_classes, imbalance, infer_task
    from .validation import token_lengths

    if trials is None and budget_s is None:
        raise BertclfError("say how long to search: --trials N or --budget 1h (or both)")
    if trials is not None and trials < 1:
        raise BertclfError(f"--trials {trials}: must be at least 1")
    if dev is None and not base.get("val_fraction", 0.2):
        raise BertclfError("tuning needs a dev set: pass --dev FILE or keep --val-fraction above 0")
    os.makedirs(output, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    import warnings

    # The heartbeat and its retry callback are marked experimental; they are what makes a killed run resumable.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    storage = storage or f"sqlite:///{os.path.abspath(os.path.join(output, STUDY_FILE))}"

    multilabel = infer_task(train_labels, base.get("task", "auto"), label_sep=None) == "multilabel"
    source = resolve_model(base.get("model"))
    tokenizer = load_tokenizer(source)
    counts = _label_counts(train_labels, multilabel)
    check_classes(train_labels, multilabel, "training data")
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(source)
    defaults = {**{f.name: f.default for f in dataclasses.fields(TextClassifier)}, **base}
    defaults["lr"] = defaults["lr"] or default_lr(config)
    defaults["max_length"] = resolve_max_length(defaults["max_length"], tokenizer, source)
    p99_tokens = token_lengths(tokenizer, train_texts, defaults["max_length"])["p99"]
    # The defaults trial trains as `bertclf train` would: epochs derived from the rows it trains on (without a
    # dev file, holdout_split's train_test_split holds out ceil(fraction x rows)).
    rows = len(train_texts) if dev is not None else len(train_texts) - math.ceil(len(train_texts) * defaults["val_fraction"])
    defaults["epochs"] = defaults["epochs"] or default_epochs(rows, defaults["batch_size"] * defaults["grad_accum"], multilabel)
    space = default_space(defaults, p99_tokens, imbalance(counts), tokenizer.model_max_length,
                          multilabel)
    if space_file:
        space = load_space(space_file, space)

    try:
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
        rdb = optuna.storages.RDBStorage(storage, heartbeat_interval=30, grace_period=120,
                                         heartbeat_stale_trial_callback=retry)
    except Exception as err:  # noqa: BLE001 — SQLAlchemy/driver errors: a bad URL, no driver, no server
        raise BertclfError(f"--storage {storage}: cannot open the study database ({type(err).__name__}: {err})") from None
    study = optuna.create_study(
        study_name=study_name, storage=rdb, direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=defaults["seed"], n_startup_trials=5),
        # n_min_trials: with one earlier trial at an epoch, "the median" is that trial, and a run nearly as
        # good was pruned (Banking77, trial 6 at 0.9231 against 0.9251); three make it a median.
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1, n_min_trials=3),
    )
    if not study.trials:
        study.set_user_attr("space", space)
        study.set_user_attr("metric", defaults["metric"])
        searched = {k: defaults[k] for k, spec in space.items() if not _fixed(spec) and _inside(spec, defaults[k])}
        study.enqueue_trial(searched, user_attrs={"defaults": True})
    elif study.user_attrs.get("metric") != defaults["metric"]:
        raise BertclfError(f"this study optimises {study.user_attrs.get('metric')}, not {defaults['metric']}; "
                           "use the same --metric or another --output/--study-name")
    else:
        space = study.user_attrs["space"]  # a resumed study keeps its space

    metric = defaults["metric"]
    say = (lambda message: print(message, file=sys.stderr)) if verbose else (lambda message: None)
    started_run = time.perf_counter()
    used_before = float(study.user_attrs.get("seconds_used", 0.0))

    def objective(trial) -> float:
        params = {**defaults, **suggest(trial, space), "verbose": False}
        clf = TextClassifier(**{k: v for k, v in params.items() if k in {f.name for f in dataclasses.fields(TextClassifier)}})

        def report(row: dict) -> None:
            if "dev" in row:
                trial.report(row["dev"][metric], row["epoch"])
                if trial.should_prune():
                    raise optuna.TrialPruned(f"epoch {row['epoch']}: {metric} {row['dev'][metric]:.4f}")

        started = time.perf_counter()
        clf.fit(train_texts, train_labels, eval_set=dev, data_info=data_info, on_epoch=report)
        value = clf.metrics_["dev"][metric]
        trial.set_user_attr("seconds", round(time.perf_counter() - started, 1))
        trial.set_user_attr("best_epoch", clf.best_epoch_)
        if test is not None:
            clf.metrics_["test"] = clf.evaluate(*test, where="test data")
            trial.set_user_attr("test", clf.metrics_["test"][metric])
        best_so_far = max((t.value for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))),
                          default=-math.inf)
        if value > best_so_far:  # keep the best model; a trial that beats it replaces it atomically
            clf.save(os.path.join(output, MODEL_DIR), overwrite=True,
                     extra={**(extra_record or {}), "tuning": {"study": study_name, "trial": trial.number}})
        return value

    def progress(study_, trial) -> None:
        study_.set_user_attr("seconds_used", used_before + time.perf_counter() - started_run)
        if trial.state == optuna.trial.TrialState.COMPLETE:
            shown = ", ".join(f"{k} {_short(v)}" for k, v in trial.params.items())
            say(f"trial {trial.number}: {metric} {trial.value:.4f} ({shown}) {trial.user_attrs.get('seconds', 0):.0f} s; "
                f"best {study_.best_value:.4f} (trial {study_.best_trial.number})")
        elif trial.state == optuna.trial.TrialState.PRUNED:
            say(f"trial {trial.number}: pruned")
        elif trial.state == optuna.trial.TrialState.FAIL:
            say(f"trial {trial.number}: failed ({trial.system_attrs.get('fail_reason', 'see the log')})")

    callbacks = [progress]
    if trials is not None:
        finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        callbacks.append(optuna.study.MaxTrialsCallback(trials, states=finished))
    timeout = None
    if budget_s is not None:
        timeout = budget_s - used_before
        if timeout <= 0:
            say(f"the budget of {budget_s:.0f} s was used by earlier runs of this study; reporting only")
    done = len([t for t in study.trials if t.state.is_finished() and t.state != optuna.trial.TrialState.FAIL])
    if (timeout is None or timeout > 0) and (trials is None or done < trials):
        study.optimize(objective, timeout=timeout, callbacks=callbacks, catch=(RuntimeError, MemoryError))

    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not completed:
        raise BertclfError("no trial completed; see the messages above (a larger --budget, or fewer epochs)")
    best = study.best_trial
    tuned = {**{k: defaults[k] for k in TUNED if k in defaults}, **_fixed_values(space), **best.params}
    best_config = {k.replace("_", "-"): v for k, v in {**_config_base(defaults), **tuned}.items()}
    best_yaml = os.path.join(output, BEST_YAML)
    from .artifact import atomic_write_text

    header = (f"# bertclf tune: best of {len(completed)} completed trials in study '{study_name}' "
              f"(trial {best.number}, dev {metric} {best.value:.4f})\n# use: bertclf train TRAIN_FILE --config {BEST_YAML}\n")
    atomic_write_text(best_yaml, header + yaml.safe_dump(best_config, sort_keys=False))
    default_trial = next((t for t in completed if t.user_attrs.get("defaults")), None)
    write_report(study, output, metric)
    model_dir = os.path.join(output, MODEL_DIR)
    return TuneResult(study_name, storage, best.value, best.params, default_trial.value if default_trial else None,
                      len(study.trials), best_yaml, model_dir if os.path.isdir(model_dir) else None)


def write_report(study, output: str, metric: str) -> None:
    """trials.csv (every trial), report.md (table, defaults vs best) and report.png (metric per trial, importances)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna

    from .artifact import atomic_write_text

    frame = study.trials_dataframe(attrs=("number", "state", "value", "params", "user_attrs", "duration"))
    atomic_write_text(os.path.join(output, "trials.csv"), frame.to_csv(index=False))
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = study.best_trial
    default = next((t for t in completed if t.user_attrs.get("defaults")), None)
    importances = {}
    if len(completed) >= 3:
        import warnings

        with warnings.catch_warnings():  # with few trials the evaluator says its estimates are coarse; so do we
            warnings.simplefilter("ignore")
            try:
                importances = optuna.importance.get_param_importances(study)
            except (RuntimeError, ValueError):  # too few distinct values to tell
                importances = {}

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    xs = [t.number for t in completed]
    ys = [t.value for t in completed]
    axes[0].plot(xs, ys, "o", label=f"dev {metric}")
    running = [max(ys[: i + 1]) for i in range(len(ys))]
    axes[0].step(xs, running, where="post", label="best so far")
    if default:
        axes[0].axhline(default.value, color="grey", linestyle="--", label="defaults")
    axes[0].set_xlabel("trial")
    axes[0].set_ylabel(metric)
    axes[0].legend()
    if importances:
        names = list(importances)[::-1]
        axes[1].barh(names, [importances[n] for n in names])
        axes[1].set_title("parameter importance (Optuna's default evaluator)")
    else:
        axes[1].text(0.5, 0.5, "importance needs ≥ 3 completed trials", ha="center", va="center")
        axes[1].set_axis_off()
    fig.tight_layout()
    tmp = os.path.join(output, f".report.png.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, os.path.join(output, "report.png"))

    lines = [f"# Tuning report — study '{study.study_name}'", "",
             f"Objective: dev {metric} (maximised). Trials: {len(study.trials)} "
             f"({len(completed)} completed, {sum(t.state.name == 'PRUNED' for t in study.trials)} pruned, "
             f"{sum(t.state.name == 'FAIL' for t in study.trials)} failed).", ""]
    if default:
        test = lambda t: f", test {t.user_attrs['test']:.4f}" if "test" in t.user_attrs else ""  # noqa: E731
        lines += [f"- defaults (trial {default.number}): dev {default.value:.4f}{test(default)}",
                  f"- best (trial {best.number}): dev {best.value:.4f}{test(best)} — "
                  + ("beats the defaults" if best.value > default.value else "the defaults were not beaten"), ""]
    if importances:
        lines += ["Importance (Optuna's default evaluator; coarse with few trials): "
                  + ", ".join(f"{k} {v:.2f}" for k, v in importances.items()), ""]
    names = sorted({k for t in study.trials for k in t.params})
    lines += ["| trial | state | dev | " + " | ".join(names) + " | seconds |",
              "|---:|---|---:|" + "---:|" * len(names) + "---:|"]
    for t in study.trials:
        value = f"{t.value:.4f}" if t.value is not None else ""
        cells = " | ".join(_short(t.params[n]) if n in t.params else "" for n in names)
        lines.append(f"| {t.number} | {t.state.name.lower()} | {value} | {cells} | {t.user_attrs.get('seconds', '')} |")
    atomic_write_text(os.path.join(output, "report.md"), "\n".join(lines) + "\n")


def _fixed(spec) -> bool:
    return not isinstance(spec, (dict, list))


def _inside(spec, value) -> bool:
    """Whether the default value is one the space can produce (only then is the defaults trial exact)."""
    if isinstance(spec, list):
        return value in spec
    return value is not None and float(spec["low"]) <= float(value) <= float(spec["high"])


def _fixed_values(space: dict) -> dict:
    return {k: v for k, v in space.items() if _fixed(v)}


def _config_base(defaults: dict) -> dict:
    """The settings a trial did not search, as ``train --config`` keys (model, task, metric, seed, ...)."""
    keep = ("model", "task", "metric", "seed", "patience", "precision", "val_fraction", "grad_accum", "max_grad_norm")
    return {k: defaults[k] for k in keep if defaults.get(k) is not None}


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _label_counts(labels: Sequence, multilabel: bool) -> dict:
    from .data import label_counts

    return label_counts([sorted(y) if multilabel else str(y) for y in labels], multilabel)


def parse_budget(text: str) -> float:
    """'90s', '45m', '1h', '1.5h' or plain seconds → seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        if text[-1:].lower() in units:
            seconds = float(text[:-1]) * units[text[-1].lower()]
        else:
            seconds = float(text)
    except ValueError:
        raise BertclfError(f"--budget {text}: expected a duration like 90s, 45m or 1h") from None
    if seconds <= 0:
        raise BertclfError(f"--budget {text}: must be positive")
    return seconds
