"""Sampling and scoring as plain functions of a model, checked against independent computations:
every emitted token is re-derived from a fresh forward pass over the whole prefix."""

import contextvars
import math

import pytest
import torch
import torch.nn.functional as F

from lstmkit.device import cpu_has_native_bf16
from lstmkit.errors import UserError
from lstmkit.lm.config import LMConfig
from lstmkit.lm.evaluate import perplexity, stream_perplexity
from lstmkit.lm.generate import (
    Detokenizer,
    choose_next,
    draw_rows,
    inverse_cdf,
    make_generator,
    sample_ids,
    score_ids,
    token_nlls,
)
from lstmkit.lm.model import build_language_model

V = 30


@pytest.fixture(params=["lstm", "gru"])
def model(request):
    torch.manual_seed(0)
    config = LMConfig(hidden_size=16, num_layers=2, init_scale=0.6, cell=request.param)
    return build_language_model(config, vocab_size=V).eval()


def draw(model, length=60, context=(3, 1, 4), **kwargs):
    seed = kwargs.pop("seed", 0)
    return list(sample_ids(model, list(context), length, generator=make_generator(seed),
                           **kwargs))


def prefix_logits(model, context, emitted):
    """Logits before each emitted token, from one forward pass over context + emitted."""
    ids = torch.tensor([list(context) + emitted[:-1]])
    with torch.no_grad():
        logits, _ = model(ids, model.zero_state(1))
    return logits[0, len(context) - 1:]  # [len(emitted), V]


def test_same_seed_same_tokens_other_seed_other_tokens(model):
    assert draw(model, seed=7) == draw(model, seed=7)
    assert draw(model, seed=7) != draw(model, seed=8)


def test_top_k_never_emits_a_token_outside_the_k_most_likely(model):
    context = (3, 1, 4)
    emitted = draw(model, 300, context, temperature=3.0, top_k=3)
    allowed = torch.topk(prefix_logits(model, context, emitted), 3, dim=1).indices
    assert all(tok in allowed[t].tolist() for t, tok in enumerate(emitted))
    # Without top-k the same hot sampler does leave the top 3: the check above has teeth.
    free = draw(model, 300, context, temperature=3.0)
    allowed = torch.topk(prefix_logits(model, context, free), 3, dim=1).indices
    assert any(tok not in allowed[t].tolist() for t, tok in enumerate(free))


def test_temperature_zero_is_greedy_and_tiny_temperature_tends_to_it(model):
    context = (5,)
    greedy = draw(model, 80, context, temperature=0)
    expected = prefix_logits(model, context, greedy).argmax(dim=1).tolist()
    assert greedy == expected, "every token is the argmax given the tokens before it"
    assert draw(model, 80, context, temperature=0, seed=123) == greedy, "seed plays no part"
    for seed in range(3):
        assert draw(model, 80, context, temperature=1e-6, seed=seed) == greedy
    assert draw(model, 80, context, temperature=1.0) != greedy


def test_top_k_one_is_greedy(model):
    greedy = draw(model, 50, temperature=0)
    assert draw(model, 50, temperature=2.0, top_k=1, seed=5) == greedy


def test_top_k_keeps_exactly_k_even_when_logits_tie():
    generator = make_generator(0)
    drawn = {choose_next(torch.zeros(10), 1.0, 3, generator) for _ in range(300)}
    assert len(drawn) == 3


def test_top_k_larger_than_the_vocabulary_keeps_everything(model):
    assert draw(model, 40, temperature=1.0, top_k=10 * V) == draw(model, 40, temperature=1.0)


def test_sampling_distribution_follows_the_softmax_at_the_temperature():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    generator = make_generator(0)
    n = 20000
    counts = torch.bincount(torch.tensor([choose_next(logits, 0.5, None, generator)
                                          for _ in range(n)]), minlength=4)
    expected = torch.softmax(logits / 0.5, dim=0)
    assert torch.allclose(counts / n, expected, atol=0.015)


def test_drawing_by_the_running_sum_never_picks_a_column_of_weight_zero():
    weights = torch.tensor([[0.0, 0.3, 0.0, 0.7, 0.0, 0.0],
                            [0.0, 0.0, 0.0, 0.0, 1e-300, 0.0]], dtype=torch.float64)
    below_one = torch.nextafter(torch.tensor(1.0, dtype=torch.float64), torch.tensor(0.0))
    for u, want in ((0.0, [1, 4]), (0.3, [3, 4]), (0.2999, [1, 4]), (below_one, [3, 4])):
        picked = inverse_cdf(weights, torch.full((2, 1), float(u), dtype=torch.float64))
        assert picked.tolist() == want, u
    drawn = draw_rows(weights[:1].expand(1000, -1), make_generator(0))
    assert set(drawn.tolist()) == {1, 3}


def test_logits_that_are_not_numbers_are_a_user_error_not_an_index_error():
    for logits in (torch.tensor([0.0, math.nan, 1.0]), torch.full((3,), -math.inf)):
        with pytest.raises(UserError, match="not numbers"):
            choose_next(logits, 1.0, None, make_generator(0))


@pytest.mark.parametrize("kwargs, message", [
    ({"length": -1}, "sample length must be an integer >= 0"),
    ({"length": 2.5}, "sample length must be an integer >= 0"),
    ({"temperature": -0.1}, "temperature must be a number >= 0"),
    ({"temperature": math.nan}, "temperature must be a number >= 0"),
    ({"top_k": 0}, "top-k must be an integer >= 1"),
])
def test_bad_sampling_arguments_are_user_errors(model, kwargs, message):
    args = {"length": 5, "temperature": 1.0, "top_k": None, **kwargs}
    with pytest.raises(UserError, match=message):
        list(sample_ids(model, [1], args["length"], args["temperature"], args["top_k"]))


def test_bad_seed_is_a_user_error():
    with pytest.raises(UserError, match="seed must be an integer"):
        make_generator(-1)


def test_sampling_is_lazy_and_leaves_training_mode_as_it_was(model):
    model.train()
    tokens = sample_ids(model, [1], 10 ** 9, generator=make_generator(0))
    assert isinstance(next(tokens), int)  # the first token arrives before the rest are drawn
    tokens.close()
    assert model.training


def direct_nlls(model, ids):
    """Token by token with an explicit log-softmax (batch 1, one step at a time)."""
    state, out = model.zero_state(1), []
    with torch.no_grad():
        for t in range(len(ids) - 1):
            logits, state = model(ids[t].view(1, 1), state)
            out.append(-F.log_softmax(logits.view(-1), dim=0)[ids[t + 1]].item())
    return torch.tensor(out)


def test_token_nlls_equal_a_token_by_token_computation(model):
    ids = torch.randint(0, V, (237,))
    assert torch.allclose(token_nlls(model, ids), direct_nlls(model, ids), atol=1e-5)


def test_score_equals_evaluate_stream_perplexity(model):
    ids = torch.randint(0, V, (1234,))
    score = score_ids(model, ids)
    reference = stream_perplexity(model, ids)
    assert score.tokens == reference.tokens == 1233
    assert score.perplexity == pytest.approx(reference.value, rel=1e-6)
    assert score.nll == pytest.approx(reference.nll, rel=1e-6)
    assert score.perplexity == pytest.approx(perplexity(model, ids, 1, 7).value, rel=1e-5)
    assert score.logprob_bits == pytest.approx(-score.nll / math.log(2))
    assert score.bits_per_token == pytest.approx(math.log2(score.perplexity))


def test_line_scores_add_up_to_the_total_and_the_first_token_is_context(model):
    ids = torch.randint(0, V, (40,))
    lengths = [5, 1, 20, 14]
    score = score_ids(model, ids, lengths)
    nlls = direct_nlls(model, ids)
    assert [line.tokens for line in score.lines] == [4, 1, 20, 14]
    assert sum(line.nll for line in score.lines) == pytest.approx(score.nll, rel=1e-9)
    assert score.lines[1].nll == pytest.approx(nlls[4].item(), abs=1e-5)  # ids[5] given ids[:5]
    assert score.lines[2].nll == pytest.approx(nlls[5:25].sum().item(), abs=1e-4)
    single = score_ids(model, ids[:2], [1, 1])
    assert single.lines[0].tokens == 0 and single.lines[0].perplexity is None


def test_scoring_one_token_is_a_user_error(model):
    with pytest.raises(UserError, match="too few to score"):
        token_nlls(model, torch.tensor([3]))


def test_words_are_spaced_and_eos_is_a_line_break():
    words = Detokenizer("word")
    assert "".join(words.text_of(t) for t in ["the", "cat", "<eos>", "a", "<eos>", "<eos>"]) \
        == "the cat\na\n\n"
    chars = Detokenizer("char")
    assert "".join(chars.text_of(t) for t in ["a", " ", "\n", "<"]) == "a \n<"


def test_sampling_in_a_kept_block_draws_what_packing_afresh_draws():
    """`lstmkit sample` holds the weights for the whole sample (nn.kept.weights_kept): with
    lstmkit's LSTM layer the tokens are those drawn without the block, and greedy tokens are
    the argmax of logits recomputed over the prefix outside it."""
    from lstmkit.nn.kept import weights_kept
    torch.manual_seed(0)
    config = LMConfig(hidden_size=16, num_layers=2, init_scale=0.6, lstm_impl="native")
    model = build_language_model(config, vocab_size=V).eval()
    outside = draw(model, seed=3)
    with weights_kept():
        inside = draw(model, seed=3)
        greedy = draw(model, length=20, temperature=0.0)
    assert inside == outside
    assert greedy == prefix_logits(model, (3, 1, 4), greedy).argmax(dim=1).tolist()


def test_a_generators_tokens_share_kept_weights_and_a_load_between_them_is_seen(monkeypatch):
    """A sample's steps share one kept block (W_ih's cast, W_hh's panels, the output layer's
    cast): greedy tokens drawn around a load of other weights between two tokens are those
    drawn when nothing is kept; the caller's code between tokens runs outside the block and
    outside autocast."""
    from lstmkit.lm import generate
    from lstmkit.nn.kept import weights_are_kept

    torch.manual_seed(0)
    config = LMConfig(hidden_size=16, num_layers=2, init_scale=0.6, lstm_impl="native")
    model, other = (build_language_model(config, vocab_size=V).eval() for _ in range(2))
    first_weights = {k: v.clone() for k, v in model.state_dict().items()}
    precision = "bf16" if cpu_has_native_bf16() else "fp32"

    def draw_around_a_load(load: bool) -> list[int]:
        model.load_state_dict(first_weights)
        steps = sample_ids(model, [3, 1, 4], 12, temperature=0.0, precision=precision)
        tokens = [next(steps) for _ in range(4)]
        assert not weights_are_kept() and not torch.is_autocast_enabled("cpu")
        if load:
            model.load_state_dict(other.state_dict())
        return tokens + list(steps)

    kept = draw_around_a_load(load=True)
    assert kept != draw_around_a_load(load=False), "the load changes the tokens"
    monkeypatch.setattr(generate, "kept_weights_context", contextvars.copy_context)
    assert kept == draw_around_a_load(load=True)
