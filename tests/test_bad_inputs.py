"""The catalogue of bad inputs: each gets one exact error line, exit code 2, and nothing written.

Messages are compared in full ({tmp} stands for the test's temporary directory): they are the interface
a user reads, so a change to one is a deliberate change to this file.
"""

from __future__ import annotations

import os

import pytest

from bertclf.cli import main

GOOD = "text,label\na fine film,positive\na dull film,negative\ngreat fun,positive\nawful,negative\n"


def run(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_refused(argv, capsys, tmp_path, expected: str):
    """Exit 2, exactly ``error: <expected>`` on stderr, no output directory and no temporary leftovers."""
    code, _, err = run(argv, capsys)
    assert code == 2, err
    assert err.strip() == "error: " + expected.format(tmp=tmp_path)
    assert not (tmp_path / "out").exists()
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p], "a temporary artifact was left behind"


@pytest.fixture
def train_cmd(tmp_path, tiny_model_dir):
    def _cmd(train_file, *extra):
        return ["train", train_file, "-o", tmp_path / "out", "--model", tiny_model_dir, "--epochs", "1", "--quiet", *extra]

    return _cmd


def test_missing_file(train_cmd, capsys, tmp_path):
    assert_refused(train_cmd(tmp_path / "nope.csv"), capsys, tmp_path, "{tmp}/nope.csv: no such file; check the path")


def test_unknown_extension(train_cmd, capsys, tmp_path, write):
    assert_refused(train_cmd(write("data.xlsx", GOOD)), capsys, tmp_path,
                   "{tmp}/data.xlsx: unknown file type '.xlsx'; use one of .csv, .jsonl, .ndjson, .parquet, .tsv")


def test_missing_text_column_lists_columns(train_cmd, capsys, tmp_path, write):
    path = write("t.csv", "sentence,label\nhi,a\nho,b\n")
    assert_refused(train_cmd(path), capsys, tmp_path,
                   "{tmp}/t.csv: no text column 'text' (columns found: 'sentence', 'label'); pass --text-column NAME")


def test_missing_label_column(train_cmd, capsys, tmp_path, write):
    path = write("t.csv", "text,category\nhi,a\nho,b\n")
    assert_refused(train_cmd(path), capsys, tmp_path,
                   "{tmp}/t.csv: no label column 'label' (columns found: 'text', 'category'); pass --label-column NAME")


def test_empty_file(train_cmd, capsys, tmp_path, write):
    assert_refused(train_cmd(write("t.csv", "")), capsys, tmp_path,
                   "{tmp}/t.csv: the file is empty; it needs a header and at least one data row")


def test_header_only(train_cmd, capsys, tmp_path, write):
    assert_refused(train_cmd(write("t.csv", "text,label\n")), capsys, tmp_path,
                   "{tmp}/t.csv: no data rows, only a header; add labelled rows")


def test_empty_text_names_rows_and_drop_empty_skips_them(train_cmd, capsys, tmp_path, write):
    path = write("t.csv", GOOD + ",positive\n   ,negative\n")
    assert_refused(train_cmd(path), capsys, tmp_path, "{tmp}/t.csv rows 6, 7 (the header is row 1): empty text; "
                   "fill or remove these rows, or pass --drop-empty to skip them")
    code, _, err = run(train_cmd(path, "--drop-empty", "--val-fraction", "0"), capsys)
    assert code == 0, err
    from bertclf.artifact import read_record

    record = read_record(str(tmp_path / "out"))
    assert record["data"]["train"]["dropped_empty"] == 2 and record["data"]["train"]["rows"] == 4


def test_missing_label(train_cmd, capsys, tmp_path, write):
    assert_refused(train_cmd(write("t.csv", GOOD + "no label here,\n")), capsys, tmp_path,
                   "{tmp}/t.csv row 6 (the header is row 1): missing label; every row needs a label")


def test_one_class_only(train_cmd, capsys, tmp_path, write):
    path = write("t.csv", "text,label\na,pos\nb,pos\nc,pos\n")
    assert_refused(train_cmd(path), capsys, tmp_path,
                   "{tmp}/t.csv: only one class ('pos') in the training labels; a classifier needs at least two")


@pytest.mark.parametrize("flag", ["--dev", "--test"])
def test_unseen_label_in_dev_or_test(train_cmd, capsys, tmp_path, write, flag):
    other = write("other.csv", "text,label\nmeh,neutral\nfine,positive\n")
    assert_refused(train_cmd(write("t.csv", GOOD), flag, other), capsys, tmp_path, "{tmp}/other.csv: label(s) "
                   "'neutral' never occur in the training data; fix the labels or add training examples of them")


def test_non_utf8_names_the_line(train_cmd, capsys, tmp_path, write):
    path = write("t.csv", GOOD.encode() + "caf\xe9 au lait,positive\n".encode("latin-1"))
    assert_refused(train_cmd(path), capsys, tmp_path, "{tmp}/t.csv line 6: byte 0xE9 is not valid UTF-8; "
                   "re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)")


def test_bom_prefixed_csv_is_read(tmp_path, write):
    from bertclf.data import read_labeled

    data, task = read_labeled(write("t.csv", "\ufeff" + GOOD))
    assert task == "binary" and data.texts[0] == "a fine film"


def test_malformed_jsonl_names_the_line(train_cmd, capsys, tmp_path, write):
    path = write("t.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n{"text": "c", label: y}\n')
    assert_refused(train_cmd(path), capsys, tmp_path, "{tmp}/t.jsonl line 3: invalid JSON (Expecting property name "
                   "enclosed in double quotes); each line must be one JSON object")


def test_jsonl_number_and_string_labels_mixed(train_cmd, capsys, tmp_path, write):
    path = write("t.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": "one"}\n{"text": "c", "label": 0}\n')
    assert_refused(train_cmd(path), capsys, tmp_path,
                   "{tmp}/t.jsonl lines 1, 3: label is a number here but a string elsewhere; use one type for all labels")


def test_output_exists_needs_overwrite(train_cmd, capsys, tmp_path, write):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    code, _, err = run(train_cmd(write("t.csv", GOOD)), capsys)
    assert code == 2 and "already exists; pass --overwrite" in err
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_model_path_that_is_not_a_model(capsys, tmp_path, write):
    not_model = tmp_path / "not-a-model"
    not_model.mkdir()
    argv = ["train", write("t.csv", GOOD), "-o", tmp_path / "out", "--model", not_model, "--quiet"]
    assert_refused(argv, capsys, tmp_path,
                   "{tmp}/not-a-model: not a model directory (no config.json); pass a Hugging Face model directory or id")


def test_pickle_only_checkpoint_is_refused(capsys, tmp_path, write, tiny_model_dir):
    import shutil

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, pickled)
    os.remove(pickled / "model.safetensors")
    (pickled / "pytorch_model.bin").write_bytes(b"not really")
    argv = ["train", write("t.csv", GOOD), "-o", tmp_path / "out", "--model", pickled, "--quiet"]
    assert_refused(argv, capsys, tmp_path, "{tmp}/pickled: no model.safetensors weights (found only pickle "
                   "checkpoint(s) ['pytorch_model.bin']; convert them to safetensors); bertclf loads safetensors only")


def test_duplicate_column_names(train_cmd, capsys, tmp_path, write):
    assert_refused(train_cmd(write("t.csv", "text,label,text\na,b,c\n")), capsys, tmp_path,
                   "{tmp}/t.csv row 1: duplicate column name(s) ['text']; rename them so each is unique")


def test_unclosed_quote(train_cmd, capsys, tmp_path, write):
    assert_refused(train_cmd(write("t.csv", GOOD + '"never closed,positive\nmore,negative\n')), capsys, tmp_path,
                   '{tmp}/t.csv line 6: a quoted field starts here and is never closed; close the quote, '
                   'or write a quote inside a quoted field as ""')


def test_multilabel_row_with_empty_label(train_cmd, capsys, tmp_path, write):
    path = write("t.csv", "text,labels\na,joy|love\nb,anger||fear\nc,joy\n")
    assert_refused(train_cmd(path), capsys, tmp_path, "{tmp}/t.csv row 3 (the header is row 1): empty label in a "
                   "multi-label row (e.g. 'a||b' or an empty list); remove the stray '|' or give the row at least one label")


def test_unknown_config_key(train_cmd, capsys, tmp_path, write):
    config = write("c.yaml", "epochs: 2\nlearning_rate: 0.1\n")
    assert_refused(train_cmd(write("t.csv", GOOD), "--config", config), capsys, tmp_path,
                   "{tmp}/c.yaml: unknown key(s) ['learning_rate']; known keys: batch_size, batch_tokens, class_weight, compile, "
                   "distill_temperature, distill_weight, drop_empty, ema_decay, epochs, grad_accum, label_column, label_sep, label_smoothing, layer_lr_decay, long_texts, lr, "
                   "max_grad_norm, max_length, metric, model, patience, precision, refit, seed, task, teacher, text_column, tune_thresholds, val_fraction, verbose, warmup_ratio, weight_decay")


def test_max_length_beyond_the_model(train_cmd, capsys, tmp_path, write):
    assert_refused(train_cmd(write("t.csv", GOOD), "--max-length", "4096"), capsys, tmp_path,
                   "--max-length 4096 exceeds the model's limit of 512 tokens")


def test_predict_refuses_missing_text_column(capsys, tmp_path, write):
    model = tmp_path / "model"
    model.mkdir()
    (model / "bertclf.json").write_text("{}")
    code, _, err = run(["predict", model, write("p.csv", "body\nhello\n"), "-o", tmp_path / "p_out.csv"], capsys)
    assert code == 2 and "no text column 'text'" in err and "'body'" in err
    assert not (tmp_path / "p_out.csv").exists()


def test_evaluate_refuses_a_directory_that_is_not_a_bertclf_model(capsys, tmp_path, write, tiny_model_dir):
    code, _, err = run(["evaluate", tiny_model_dir, write("t.csv", GOOD)], capsys)
    assert code == 2 and "not a bertclf model (no bertclf.json)" in err


def test_label_column_with_thousands_of_distinct_values(train_cmd, capsys, tmp_path, write):
    rows = "".join(f"text number {i},id-{i}\n" for i in range(10_000))
    assert_refused(train_cmd(write("t.csv", "text,label\n" + rows)), capsys, tmp_path,
                   "{tmp}/t.csv: 10000 distinct labels in 10000 rows, so most classes have one example; "
                   "this looks like a text or id column: check --label-column")


def test_model_directory_without_weights(capsys, tmp_path, write, tiny_model_dir):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(tiny_model_dir, bare)
    os.remove(bare / "model.safetensors")
    argv = ["train", write("t.csv", GOOD), "-o", tmp_path / "out", "--model", bare, "--quiet"]
    assert_refused(argv, capsys, tmp_path, "{tmp}/bare: no model.safetensors weights; bertclf loads safetensors only")


def test_output_on_a_filesystem_that_refuses_writes(train_cmd, capsys, tmp_path, write):
    argv = ["train", write("t.csv", GOOD), "-o", "/sys/bertclf-out", "--quiet"]
    code, _, err = run(argv, capsys)
    assert code == 2 and "/sys: cannot create files there" in err and not os.path.exists("/sys/bertclf-out")


def test_disk_full_while_saving_leaves_nothing_half_written(train_cmd, capsys, tmp_path, write, monkeypatch):
    import errno

    from bertclf import artifact

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(artifact, "write", full)
    assert_refused(train_cmd(write("t.csv", GOOD), "--val-fraction", "0"), capsys, tmp_path,
                   "{tmp}/out: could not write the model (No space left on device); free space or choose another "
                   "output (a 'bertclf train' run keeps its checkpoints for --resume)")


def test_one_megabyte_texts_are_truncated_and_counted(train_cmd, capsys, tmp_path, write):
    huge = "word " * 200_000  # 1 MB
    path = write("t.csv", GOOD + f"{huge},positive\n{huge},negative\n")
    code, _, err = run(train_cmd(path, "--val-fraction", "0", "--max-length", "32"), capsys)
    assert code == 0, err
    from bertclf.artifact import read_record

    assert read_record(str(tmp_path / "out"))["truncated"]["train"] == 2


def test_validate_reports_leakage_duplicates_and_lengths(capsys, tmp_path, write):
    train = write("train.csv", GOOD + "a fine film,negative\n")
    dev = write("dev.csv", "text,label\nA  FINE film,positive\nnew text,negative\n")
    code, out, err = run(["validate", train, "--dev", dev, "--max-length", "4"], capsys)
    assert code == 0, err
    assert "1 texts with conflicting labels" in out and "1 rows also in train" in out
    assert "texts longer than --max-length 4" in out and out.strip().endswith("ok: train would accept these files")


def test_validate_refuses_what_train_refuses(capsys, tmp_path, write):
    dev = write("dev.csv", "text,label\nmeh,neutral\n")
    code, _, err = run(["validate", write("t.csv", GOOD), "--dev", dev], capsys)
    assert code == 2 and "'neutral'" in err and "never occur" in err
