import math

import pytest
import torch
import torch.nn.functional as F

from lstmkit.lm.config import preset
from lstmkit.lm.evaluate import perplexity, stream_perplexity, unigram_perplexity
from lstmkit.lm.model import build_language_model


@pytest.fixture
def model():
    import dataclasses
    torch.manual_seed(0)
    config = dataclasses.replace(preset("small"), hidden_size=16, init_scale=0.5)
    return build_language_model(config, vocab_size=40).eval()


def direct_stream_perplexity(model, ids):
    """Token by token with an explicit log-softmax: the tutorial's batch 1, num_steps 1."""
    state = model.zero_state(1)
    total = 0.0
    with torch.no_grad():
        for t in range(len(ids) - 1):
            logits, state = model(ids[t].view(1, 1), state)
            total -= F.log_softmax(logits.view(-1), dim=0)[ids[t + 1]].item()
    return math.exp(total / (len(ids) - 1))


def test_stream_perplexity_equals_direct_computation(model):
    ids = torch.randint(0, 40, (157,))
    result = stream_perplexity(model, ids)
    assert result.tokens == 156
    assert result.value == pytest.approx(direct_stream_perplexity(model, ids), rel=1e-5)


@pytest.mark.parametrize("num_steps", [1, 7, 50, 500])
def test_batch_one_result_does_not_depend_on_window_length(model, num_steps):
    ids = torch.randint(0, 40, (157,))
    reference = perplexity(model, ids, 1, 3).value
    assert perplexity(model, ids, 1, num_steps).value == pytest.approx(reference, rel=1e-5)


def test_batched_shape_counts_all_but_row_boundary_targets(model):
    ids = torch.randint(0, 40, (1000,))
    result = perplexity(model, ids, 4, 9)
    assert result.tokens == 4 * (1000 // 4 - 1)
    assert result.shape == "batch 4 x 9 steps"
    assert stream_perplexity(model, ids).shape == "one stream, batch 1"


def test_evaluation_leaves_training_mode_as_it_was(model):
    model.train()
    perplexity(model, torch.randint(0, 40, (50,)), 2, 5)
    assert model.training


def test_unigram_perplexity_is_that_of_the_training_frequencies_add_one_smoothed():
    train = torch.tensor([0, 0, 0, 1, 2])  # counts + 1 over a vocabulary of 4: 4, 2, 2, 1 of 9
    ids = torch.tensor([3, 0, 1])  # the first token is context only: targets 0 and 1
    want = math.exp(-(math.log(4 / 9) + math.log(2 / 9)) / 2)
    assert unigram_perplexity(train, ids, 4) == pytest.approx(want, rel=1e-12)
    assert unigram_perplexity(train, torch.tensor([3]), 4) == math.inf, "no target"


def test_a_model_that_ignores_its_input_scores_the_unigram_perplexity(model):
    """A decoder with zero weights and the log frequencies as its bias predicts the frequencies
    whatever the LSTM gives: `perplexity` must then equal `unigram_perplexity`."""
    gen = torch.Generator().manual_seed(3)
    train = torch.randint(0, 40, (500,), generator=gen) % torch.randint(1, 40, (500,),
                                                                           generator=gen)
    ids = torch.randint(0, 40, (300,), generator=gen)
    counts = torch.bincount(train, minlength=40).double() + 1
    with torch.no_grad():
        model.decoder.weight.zero_()
        model.decoder.bias.copy_((counts / counts.sum()).log())
    got = stream_perplexity(model, ids).value
    assert got == pytest.approx(unigram_perplexity(train, ids, 40), rel=1e-5)


def test_an_evaluation_pass_runs_inside_one_kept_block(model, kept_calls):
    seen = kept_calls
    ids = torch.randint(0, 40, (120,), generator=torch.Generator().manual_seed(0))
    perplexity(model, ids, 4, 10)
    stream_perplexity(model, ids)
    assert seen and all(seen)
