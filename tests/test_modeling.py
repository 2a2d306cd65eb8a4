"""The model stage's CPU training helpers: the cheap dropout mask must behave as nn.Dropout does, and the attention
that uses it must compute what transformers' eager attention computes; a saved classifier fine-tuned again keeps its
head only for the same labels."""

from __future__ import annotations

import pytest
import torch

from bertclf.modeling import CHEAP_EAGER_ATTENTION, CheapDropout, cheap_dropout, device_type, load_classifier, training_attention

from .conftest import FAST, subset


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cheap_dropout_drops_p_and_rescales_the_rest(dtype):
    torch.manual_seed(0)
    layer = CheapDropout(0.1).train()
    x = torch.ones(200_000, dtype=dtype, requires_grad=True)
    y = layer(x)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.1) < 0.005  # 200k Bernoulli(0.1) draws: std 0.0007
    assert torch.allclose(y[y != 0].float(), torch.tensor(1 / 0.9), atol=1e-2)
    assert y.dtype == dtype
    y.sum().backward()  # the gradient flows through exactly the kept elements, scaled the same way
    assert torch.equal(x.grad == 0, y == 0)


def test_cheap_dropout_masks_differ_follow_the_seed_and_vanish_in_eval():
    layer = CheapDropout(0.5).train()
    x = torch.ones(1000)
    torch.manual_seed(1)
    first, second = layer(x), layer(x)
    torch.manual_seed(1)
    assert not torch.equal(first, second)
    assert torch.equal(layer(x), first)  # same seed, same mask: resumed runs replay their dropout
    assert torch.equal(layer.eval()(x), x)
    assert torch.equal(CheapDropout(1.0).train()(x), torch.zeros(1000))
    assert torch.equal(CheapDropout(0.0).train()(x), x)


def test_cheap_dropout_swaps_for_the_block_only(tiny_model_dir):
    from bertclf.modeling import load_classifier

    _, model = load_classifier(tiny_model_dir, ["a", "b"])
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    model.set_attn_implementation("eager")
    with cheap_dropout(model, enabled=True):
        assert layers and all(type(m) is CheapDropout for m in layers)
        assert model.config._attn_implementation == CHEAP_EAGER_ATTENTION
    assert all(type(m) is torch.nn.Dropout for m in layers)
    assert model.config._attn_implementation == "eager"
    with cheap_dropout(model, enabled=False):
        assert all(type(m) is torch.nn.Dropout for m in layers)
    with pytest.raises(RuntimeError), cheap_dropout(model, enabled=True):
        raise RuntimeError("training failed")
    assert all(type(m) is torch.nn.Dropout for m in layers)  # put back even when training raises
    assert model.config._attn_implementation == "eager"
    model.set_attn_implementation("sdpa")
    with cheap_dropout(model, enabled=True):  # SDPA (long texts) keeps its own kernel
        assert model.config._attn_implementation == "sdpa"


def test_cheap_attention_matches_eager_attention_and_drops_only_in_training(tiny_model_dir):
    from bertclf.modeling import load_classifier

    _, model = load_classifier(tiny_model_dir, ["a", "b"])
    ids = torch.randint(1000, 2000, (3, 9))
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0  # a padded row: the additive mask must reach the scores

    def hidden() -> torch.Tensor:
        return model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state

    model.set_attn_implementation("eager")
    for layer in model.modules():  # every dropout off: the two attentions must then agree
        if isinstance(layer, torch.nn.Dropout):
            layer.p = 0.0
    model.train()
    expected = hidden()
    with cheap_dropout(model, enabled=True):
        assert torch.allclose(hidden(), expected, atol=1e-5)
        for layer in model.base_model.encoder.layer:  # now only the attention probabilities' dropout
            layer.attention.self.dropout.p = 0.5
        torch.manual_seed(0)
        first = hidden()
        torch.manual_seed(0)
        assert torch.equal(hidden(), first)  # seeded, as the modules are
        assert (first - expected).abs().max() > 1e-3
        weights = model.base_model(input_ids=ids, attention_mask=mask, output_attentions=True).attentions[0]
        assert abs((weights[1:] == 0).float().mean().item() - 0.5) < 0.1  # unpadded rows: half the weights dropped
        model.eval()
        assert torch.allclose(hidden(), expected, atol=1e-5)


def test_a_fitted_model_keeps_plain_dropout_and_sdpa(sst_binary):
    clf, _, _ = sst_binary
    kinds = {type(m) for m in clf.model_.modules() if isinstance(m, torch.nn.Dropout)}
    assert kinds == {torch.nn.Dropout}
    assert clf.model_.config._attn_implementation == "sdpa"  # the artifact's attention, not bertclf's training one
    assert clf.training_["attention"] == training_attention(device_type())  # eager on CPU, SDPA on a GPU



def test_cheap_attention_under_bf16_autocast_stays_bf16_and_finite():
    from bertclf.modeling import eager_attention_cheap_dropout

    torch.manual_seed(0)
    query, key, value = (torch.randn(2, 4, 6, 8) for _ in range(3))
    mask = torch.zeros(2, 1, 6, 6)
    mask[0, :, :, 3:] = torch.finfo(torch.float32).min  # padding, as transformers' eager mask writes it
    mask[1, :, 2, :] = torch.finfo(torch.float32).min  # a query row masked throughout: bf16's -inf would give NaN
    module = torch.nn.Module().eval()
    out, weights = eager_attention_cheap_dropout(module, query, key, value, mask, scaling=8**-0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out16, weights16 = eager_attention_cheap_dropout(module, query, key, value, mask, scaling=8**-0.5)
    assert weights16.dtype == torch.bfloat16  # not promoted to fp32 by the mask
    assert torch.isfinite(out16).all() and torch.isfinite(weights16.float()).all()
    assert torch.allclose(weights16.float(), weights, atol=2e-2) and torch.allclose(out16.float(), out, atol=5e-2)
    assert torch.all(weights16[0, :, :, 3:] == 0)


def test_resident_embedding_grad_equals_torchs_over_accumulation_and_zero_grad(tiny_model_dir):
    from bertclf.modeling import ResidentGradEmbedding, load_classifier, resident_embedding_grad

    _, model = load_classifier(tiny_model_dir, ["a", "b"])
    model.eval()  # no dropout: both passes must see the same function
    embedding = model.get_input_embeddings()
    pad = embedding.padding_idx
    batches = [torch.tensor([[101, 7, 7, 102, pad], [101, 9, 102, pad, pad]]), torch.tensor([[101, 7, 11, 12, 102]])]

    def grads() -> list[torch.Tensor]:
        """The word-embedding gradient after backward on batches 0+1 (accumulated), then after zero_grad and batch 1."""
        out = []
        for group in ([0, 1], [1]):
            model.zero_grad(set_to_none=True)
            for i in group:
                model(input_ids=batches[i], attention_mask=(batches[i] != pad).long()).logits.sum().backward()
            out.append(embedding.weight.grad.clone())
        return out

    expected = grads()
    with resident_embedding_grad(model, enabled=True):
        assert type(embedding) is ResidentGradEmbedding
        got = grads()
    assert type(embedding) is torch.nn.Embedding and "_grad_buffer" not in embedding.__dict__
    for want, have in zip(expected, got):
        assert torch.allclose(have, want, atol=1e-6)
    assert got[0][7].abs().sum() > 0 and torch.all(got[0][pad] == 0)
    assert torch.all(got[1][9] == 0)  # batch 0's rows were cleared by zero_grad, as torch's fresh gradient has them
    with resident_embedding_grad(model, enabled=False):
        assert type(embedding) is torch.nn.Embedding


def test_label_priors_start_each_sigmoid_at_its_label_frequency(tiny_model_dir):
    from bertclf.modeling import init_label_priors, load_classifier, load_tokenizer

    _, model = load_classifier(tiny_model_dir, ["a", "b", "never"], multilabel=True)
    targets = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 0, 0]], dtype=torch.float32)
    assert init_label_priors(model, targets)
    bias = model.classifier.bias.detach()
    assert torch.allclose(torch.sigmoid(bias[:2]), torch.tensor([0.75, 0.25]))
    assert torch.isfinite(bias[2]) and torch.sigmoid(bias[2]) == pytest.approx(0.5 / 4)  # never seen: finite, small
    batch = load_tokenizer(tiny_model_dir)(["a first text", "and another one"], padding=True, return_tensors="pt")
    with torch.no_grad():  # the new head's weights are small: a forward pass starts at the frequencies too
        start = torch.sigmoid(model.eval()(**batch).logits).mean(dim=0)
    assert torch.allclose(start[:2], torch.tensor([0.75, 0.25]), atol=0.05)


def test_label_priors_find_a_two_layer_head_and_leave_an_unknown_one_alone():
    from transformers import RobertaConfig, RobertaForSequenceClassification

    config = RobertaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, num_labels=3)
    model = RobertaForSequenceClassification(config)  # head: dense (32 -> 32), then out_proj (32 -> 3)
    from bertclf.modeling import init_label_priors

    assert init_label_priors(model, torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
    assert torch.allclose(torch.sigmoid(model.classifier.out_proj.bias.detach()), torch.tensor([0.5, 0.25, 0.5]))
    before = model.classifier.dense.bias.detach().clone()
    assert not init_label_priors(model, torch.ones(2, 5))  # no output layer of 5 labels: nothing is changed
    assert torch.equal(model.classifier.dense.bias.detach(), before)


def test_layer_lr_decay_gives_each_block_its_rate_and_one_step_moves_it_that_much(tiny_model_dir):
    from bertclf.modeling import load_classifier
    from bertclf.train import _optimizer, layer_rate_factors

    _, model = load_classifier(tiny_model_dir, ["a", "b"])  # 2 encoder blocks
    factors = layer_rate_factors(model, 0.5)
    assert factors["bert.embeddings.word_embeddings.weight"] == 0.125
    assert factors["bert.encoder.layer.0.attention.self.query.weight"] == 0.25
    assert factors["bert.encoder.layer.1.output.dense.weight"] == 0.5
    assert factors["bert.pooler.dense.weight"] == factors["classifier.weight"] == 1.0
    assert set(layer_rate_factors(model, 1.0).values()) == {1.0}
    assert len(_optimizer(model, 1e-3, 0.01, 1.0).param_groups) == 2  # decay / no decay, as without the option

    optimizer = _optimizer(model, 1e-3, 0.0, 0.5)
    grouped = [p for group in optimizer.param_groups for p in group["params"]]
    assert len(grouped) == len(set(map(id, grouped))) == len(list(model.parameters()))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    ids = torch.randint(1000, 2000, (4, 12))
    model(input_ids=ids, labels=torch.tensor([0, 1, 0, 1])).loss.backward()
    optimizer.step()  # Adam's first step moves every weight with a gradient by about its rate
    moved = {name: (p.detach() - before[name]).abs().max().item() for name, p in model.named_parameters()}
    for name in ("bert.embeddings.word_embeddings.weight", "bert.encoder.layer.0.attention.self.query.weight",
                 "bert.encoder.layer.1.output.dense.weight", "classifier.weight"):
        assert moved[name] == pytest.approx(1e-3 * factors[name], rel=0.05), name


def test_a_saved_classifier_starts_from_its_head_only_for_the_same_labels(sst_binary):
    """Fine-tuning a saved bertclf model again (IMDB from an SST-2 model) keeps its head where the labels are the
    same; for other labels the head is a new, seeded one, of any size: a 3-class task from a 2-class model used to
    stop with transformers' size-mismatch RuntimeError, and a 2-class one started on the old labels' weights."""
    from safetensors.torch import load_file

    _, path, _ = sst_binary
    saved = load_file(f"{path}/model.safetensors")["classifier.weight"]
    assert torch.equal(load_classifier(path, ["negative", "positive"])[1].classifier.weight, saved)
    torch.manual_seed(0)
    other = load_classifier(path, ["bad", "good"])[1]
    torch.manual_seed(0)
    again = load_classifier(path, ["bad", "good"])[1]
    assert not torch.equal(other.classifier.weight, saved)
    assert torch.equal(other.classifier.weight, again.classifier.weight)
    assert other.config.id2label == {0: "bad", 1: "good"}
    three = load_classifier(path, ["a", "b", "c"])[1]
    assert three.classifier.weight.shape == (3, saved.shape[1])
    encoder = "bert.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(three.state_dict()[encoder], load_file(f"{path}/model.safetensors")[encoder])


def test_a_saved_binary_classifier_fine_tunes_on_six_classes(sst_binary, capsys):
    """End to end through the estimator: a TREC subset (6 classes) from the SST-2 model, which says nothing of its
    head, where the same labels say the head is kept."""
    from bertclf import TextClassifier

    _, path, dev = sst_binary
    trec = subset("trec", "train", 60)
    clf = TextClassifier(model=path, **{**FAST, "epochs": 1, "verbose": True}, precision="fp32")
    clf.fit(trec.text.tolist(), trec.label.tolist())
    assert sorted(clf.classes_) == sorted(trec.label.unique()) and len(clf.classes_) == 6
    assert "starting from its classification head" not in capsys.readouterr().err
    TextClassifier(model=path, **{**FAST, "epochs": 1, "verbose": True}, precision="fp32").fit(dev.text.tolist(), dev.label.tolist())
    assert "starting from its classification head, which has these labels" in capsys.readouterr().err
