"""The classifier model: padding never changes a text's logit; the layers have the given sizes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lstmkit.classify.config import ClassifierConfig
from lstmkit.classify.data import pad_batch
from lstmkit.classify.evaluate import batch_loss, logits_of
from lstmkit.classify.model import ClassifierShape, SentimentClassifier, build_classifier

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def texts(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 50, (n,), generator=g) for n in (7, 1, 4, 9, 2)]


def one_by_one(model, sequences):
    return torch.stack([model(s[None, :], torch.tensor([len(s)]))[0] for s in sequences])


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("packed, bidirectional", [(True, False), (False, False), (True, True)])
def test_padded_batch_gives_the_same_logits_as_each_text_alone(cell, packed, bidirectional):
    torch.manual_seed(0)
    model = SentimentClassifier(ClassifierShape(50, 8, (6, 5), cell, bidirectional),
                                packed=packed).eval()
    sequences = texts()
    ids, lengths = pad_batch(sequences)
    with torch.no_grad():
        batched = model(ids, lengths)
        alone = one_by_one(model, sequences)
    assert batched.shape == (5,)
    torch.testing.assert_close(batched, alone, rtol=0, atol=1e-6)


def test_unpacked_bidirectional_model_does_see_padding():
    """Why `packed` matters: the backward direction of a padded batch starts in the padding."""
    torch.manual_seed(0)
    model = SentimentClassifier(ClassifierShape(50, 8, (6,), "lstm", True), packed=False).eval()
    sequences = texts()
    with torch.no_grad():
        batched = model(*pad_batch(sequences))
        alone = one_by_one(model, sequences)
    assert not torch.allclose(batched, alone, atol=1e-4)


def test_logit_is_a_linear_map_of_the_last_real_step_of_the_top_layer():
    """An independent computation: run the layers by hand and read step len-1."""
    torch.manual_seed(1)
    model = SentimentClassifier(ClassifierShape(50, 8, (6, 4))).eval()
    seq = texts()[0]
    with torch.no_grad():
        x = model.embedding(seq[None, :])
        for layer in model.layers:
            x, _ = layer(x)
        expected = x[0, -1] @ model.output.weight[0] + model.output.bias[0]
        assert model(seq[None, :], torch.tensor([len(seq)])).item() == pytest.approx(
            expected.item(), abs=1e-6)


def test_layers_follow_the_given_sizes_and_cell():
    model = build_classifier(ClassifierConfig(layer_sizes=(128, 64), cell="gru",
                                              embed_size=32), vocab_size=100)
    assert [type(layer) for layer in model.layers] == [nn.GRU, nn.GRU]
    assert [(layer.input_size, layer.hidden_size) for layer in model.layers] == [(32, 128),
                                                                                  (128, 64)]
    assert model.output.in_features == 64
    assert model.embedding.padding_idx == 0


def test_evaluation_order_does_not_change_logits():
    torch.manual_seed(0)
    model = SentimentClassifier(ClassifierShape(50, 8, (6,))).eval()
    sequences = texts() * 3
    got = logits_of(model, sequences, batch_size=4)  # length-sorted batches, input order back
    with torch.no_grad():
        torch.testing.assert_close(got, one_by_one(model, sequences), rtol=0, atol=1e-6)


def test_mse_loss_is_on_the_sigmoid_and_bce_on_the_logit():
    logits, labels = torch.tensor([0.0, 2.0]), torch.tensor([1.0, 0.0])
    p = torch.sigmoid(logits)
    assert batch_loss(logits, labels, "mse").item() == pytest.approx(
        ((p - labels) ** 2).mean().item())
    assert batch_loss(logits, labels, "bce").item() == pytest.approx(
        -(torch.log(p[0]) + torch.log(1 - p[1])).item() / 2)
