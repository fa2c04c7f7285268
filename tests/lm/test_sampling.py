"""Nucleus sampling, batched samples, beam search and stop-at, in lm.generate and through
`lstmkit.load(...)`, on untrained tiny models (sampling needs no training to be checked)."""

import math
import warnings

import pytest
import torch

import lstmkit
from lstmkit.cli import main
from lstmkit.device import cpu_has_native_bf16
from lstmkit.errors import LstmkitWarning, UserError
from lstmkit.lm.generate import (
    StopWatch,
    beam_search,
    choose_next_batch,
    make_generator,
    nucleus_mask,
    sample_ids,
    stop_text,
)
from tiny_runs import save_tiny_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {"word": lstmkit.load(save_tiny_run(root / "word", "word", eos_bias=1.5)),
            "char": lstmkit.load(save_tiny_run(root / "char", "char", cell="gru")),
            "word_path": root / "word"}


def test_top_p_keeps_the_smallest_set_of_most_likely_tokens_reaching_p():
    probs = torch.tensor([0.05, 0.4, 0.1, 0.3, 0.15])
    kept = lambda p: set(torch.nonzero(nucleus_mask(probs, p)).flatten().tolist())  # noqa: E731
    assert kept(0.4) == {1}, "the top token alone reaches 0.4"
    assert kept(0.41) == {1, 3}
    assert kept(0.7) == {1, 3}, "0.4 + 0.3 reaches 0.7 exactly"
    assert kept(0.71) == {1, 3, 4}
    assert kept(0.96) == {0, 1, 2, 3, 4}
    assert kept(1e-9) == {1}, "the most likely token is always kept"


def test_top_p_sampling_never_draws_outside_the_nucleus():
    logits = torch.log(torch.tensor([[0.05, 0.4, 0.1, 0.3, 0.15]])).expand(400, -1)
    drawn = choose_next_batch(logits, 1.0, None, make_generator(0), top_p=0.6)
    assert set(drawn.tolist()) == {1, 3}
    assert set(choose_next_batch(logits, 1.0, None, make_generator(0)).tolist()) == set(range(5))


@pytest.mark.parametrize("temperature", [1e-310, 5e-324, 1e-30])
def test_a_vanishing_temperature_draws_the_most_likely_token(temperature):
    """Divided unshifted, logits / 1e-310 overflow to inf and softmax gives NaN."""
    logits = torch.tensor([[2.0, 7.5, -3.0, 7.0], [-1.0, -9.0, -0.5, -4.0]])
    drawn = choose_next_batch(logits, temperature, None, make_generator(0))
    assert drawn.tolist() == [1, 2]


def test_the_prime_is_read_into_the_same_first_logits_as_a_whole_window(runs):
    """Only its last step goes through the output layer: the same numbers as the window's."""
    from lstmkit.lm.generate import _read_context

    model = runs["word"].model.eval()
    context = [0, 3, 5, 1, 2, 6, 4]
    with torch.no_grad():
        logits, state = _read_context(model, context, torch.device("cpu"))
        window, whole = model(torch.tensor([context]), model.zero_state(1))
    torch.testing.assert_close(logits, window[:, -1], rtol=1e-6, atol=1e-6)
    for ours, theirs in zip(state, whole, strict=True):
        assert torch.equal(ours, theirs)


def test_beam_one_is_greedy(runs):
    model = runs["word"].model
    greedy = list(sample_ids(model, [0, 1], 25, temperature=0))
    (best,) = beam_search(model, [0, 1], 25, beam=1)
    assert list(best.ids) == greedy
    assert runs["word"].sample("the", 25, temperature=0) == runs["word"].sample("the", 25,
                                                                                  beam=1)[0]


@pytest.mark.parametrize("precision", ["fp32", None])
@pytest.mark.parametrize("level", ["word", "char"])
def test_a_beams_log_probability_is_the_score_of_its_text(runs, level, precision):
    """In fp32 and in the precision both use by default (the saved one: bf16 where native)."""
    run = runs[level]
    # Word scoring ends the last line with <eos>: compare whole sentences (stop at eos).
    stop_at = "eos" if level == "word" else None
    beams = run.beam_search(length=40 if level == "word" else 12, beam=3, stop_at=stop_at,
                            precision=precision)
    assert len(beams) == 3
    assert [b.score for b in beams] == sorted((b.score for b in beams), reverse=True)
    compared = 0
    for found in beams:
        if level == "word" and not found.continuation.endswith("\n"):
            continue
        scored = run.score("\n" + found.continuation, precision=precision)
        assert found.tokens == scored.tokens
        # bf16 (the default where native): beam rows and the batch-1 stream may round apart
        assert found.logprob == pytest.approx(scored.logprob_nats,
                                              abs=1e-4 if precision == "fp32" else 2e-3)
        compared += 1
    assert compared >= 1
    greedy = run.beam_search(length=12, beam=1)[0]
    assert run.beam_search(length=12, beam=3)[0].logprob >= greedy.logprob - 1e-5


def test_beam_search_stops_hypotheses_at_the_stop_and_normalises_by_length(runs):
    beams = runs["word"].beam_search(length=30, beam=4, stop_at="eos")
    for found in beams:
        assert found.continuation.count("\n") <= 1
        assert found.tokens <= 30
        assert found.score == pytest.approx(found.logprob / found.tokens)


def test_num_samples_with_one_seed_repeat_and_differ_from_each_other(runs):
    run = runs["char"]
    first = run.sample("RO", 40, seed=3, num_samples=4)
    assert first == run.sample("RO", 40, seed=3, num_samples=4)
    assert len(first) == 4 and all(t.startswith("RO") and len(t) == 42 for t in first)
    assert len(set(first)) > 1
    assert run.sample("RO", 40, seed=4, num_samples=4) != first


def test_stop_at_stops_after_the_token_that_completes_the_stop(runs):
    word, char = runs["word"], runs["char"]
    for text in word.sample(length=200, seed=1, stop_at="eos", num_samples=5):
        assert text.endswith("\n") and text.count("\n") == 1
    for text in char.sample(length=400, seed=1, stop_at="newline", num_samples=5):
        assert text.count("\n") <= 1 and (text.endswith("\n") or len(text) == 400)
    text = char.sample(length=400, seed=2, stop_at="e")
    assert text.count("e") <= 1 and (text.endswith("e") or len(text) == 400)
    free = char.sample(length=400, seed=2)
    assert "e" in free and text == free[:free.index("e") + 1], "stopping changes nothing before"


def test_stop_text_names_and_watch():
    assert stop_text("eos", "word") == "\n" and stop_text("eos", "char") == "\n\n"
    assert stop_text("newline", "char") == "\n" and stop_text("END", "word") == "END"
    watch = StopWatch("abc")
    assert [watch.add(p) for p in ("xa", "b", "cz", "abc")] == [False, False, True, True]


@pytest.mark.parametrize("kwargs, message", [
    ({"top_p": 0}, "top-p"), ({"top_p": 1.5}, "top-p"), ({"num_samples": 0}, "num_samples"),
    ({"beam": 0}, "beam"), ({"stop_at": ""}, "stop-at"),
    ({"beam": 2, "num_samples": 2}, "one of them")])
def test_bad_sampling_options_are_user_errors(runs, kwargs, message):
    with pytest.raises(UserError, match=message):
        runs["word"].sample(length=5, **kwargs)


def test_cli_sample_with_beam_samples_and_stop(runs, capsys):
    path = str(runs["word_path"])
    assert main(["sample", "--model", path, "--length", "8", "--beam", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("log-prob") == 2
    assert main(["sample", "--model", path, "--length", "30", "--seed", "1", "--top-p", "0.9",
                 "--num-samples", "3", "--stop-at", "eos"]) == 0
    out = capsys.readouterr().out
    assert out.count("=== sample") == 3
    assert main(["sample", "--model", path, "--top-p", "2"]) == 2
    assert "top-p" in capsys.readouterr().err
    assert math.isfinite(runs["word"].score("the cat\n").logprob_nats)


def test_sample_score_beam_search_and_the_generators_hold_their_weights(runs, kept_calls):
    run, seen = runs["word"], kept_calls  # a word-level LSTM: auto decides per call by the block
    for use in (lambda: run.sample(length=5, seed=0), lambda: run.score("the cat sat"),
                lambda: run.beam_search(length=5, beam=2),
                lambda: "".join(run.generate(length=5, seed=0))):
        seen.clear()
        use()
        assert seen and all(seen)


def test_sampling_runs_the_model_in_the_saved_precision_unless_asked_and_only_inside_steps(
        runs, monkeypatch):
    """As `score` does: the saved precision where this CPU has it natively (the tiny runs are
    saved as `auto`), else the one asked for; autocast is entered per step, so the caller's
    code between tokens runs without it."""
    run = runs["word"]
    seen: list[torch.dtype | None] = []
    hidden = run.model.hidden

    def recording(ids, state):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu")
                    else None)
        return hidden(ids, state)

    monkeypatch.setattr(run.model, "hidden", recording)
    saved = torch.bfloat16 if cpu_has_native_bf16() else None
    for precision, want in ((None, saved), ("fp32", None), ("bf16", torch.bfloat16)):
        seen.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LstmkitWarning)  # bf16 emulated on some CPUs
            for _ in run.generate(length=4, seed=0, precision=precision):
                assert not torch.is_autocast_enabled("cpu")
            run.beam_search(length=3, beam=2, precision=precision)
        assert seen and set(seen) == {want}
    with pytest.raises(UserError, match="precision"):
        run.sample(length=3, precision="fp64")


def test_the_command_and_a_run_loaded_with_a_precision_sample_in_it(runs, capsys):
    path = str(runs["word_path"])
    assert main(["sample", "--model", path, "--length", "30", "--seed", "4",
                 "--precision", "fp32"]) == 0
    printed = capsys.readouterr().out
    assert printed == "".join(runs["word"].generate(length=30, seed=4, precision="fp32")) + "\n"
    assert lstmkit.load(path, precision="fp32").sample(length=30, seed=4) + "\n" == printed
    with pytest.raises(UserError, match="precision"):
        lstmkit.load(path, precision="fp64")
    assert main(["sample", "--model", path, "--quantize", "int8", "--precision", "bf16"]) == 2
    assert "--quantize int8 keeps activations in fp32" in capsys.readouterr().err
