import json

import pytest

from lstmkit.errors import UserError
from lstmkit.fields import apply_overrides
from lstmkit.lm.config import PRESETS, LMConfig, load_config_file, preset

# The tutorial's preset table (Zaremba et al. 2014), column for column.
TUTORIAL_TABLE = {
    "small": (0.1, 1.0, 5, 2, 20, 200, 4, 13, 1.0, 0.5, 20),
    "medium": (0.05, 1.0, 5, 2, 35, 650, 6, 39, 0.5, 0.8, 20),
    "large": (0.04, 1.0, 10, 2, 35, 1500, 14, 55, 0.35, 1 / 1.15, 20),
    "test": (0.1, 1.0, 1, 1, 2, 2, 1, 1, 1.0, 0.5, 20),
}
COLUMNS = ("init_scale", "learning_rate", "max_grad_norm", "num_layers", "num_steps",
           "hidden_size", "max_epoch", "max_max_epoch", "keep_prob", "lr_decay", "batch_size")


@pytest.mark.parametrize("name", sorted(TUTORIAL_TABLE))
def test_preset_matches_spec_table(name):
    config = preset(name)
    assert tuple(getattr(config, c) for c in COLUMNS) == pytest.approx(TUTORIAL_TABLE[name])


@pytest.mark.parametrize("name, expected", [
    ("small", [1] * 4 + [0.5 ** k for k in range(1, 10)]),
    ("medium", [1] * 6 + [0.8 ** k for k in range(1, 34)]),
    ("large", [1] * 14 + [1.15 ** -k for k in range(1, 42)]),
    ("test", [1.0]),
])
def test_learning_rate_schedule_for_each_preset(name, expected):
    config = preset(name)
    rates = [config.learning_rate_for_epoch(e) for e in range(1, config.max_max_epoch + 1)]
    assert rates == pytest.approx(expected)
    assert len(rates) == len(expected)


def test_default_config_is_the_small_preset():
    assert LMConfig() == preset("small")
    assert set(PRESETS) == {"small", "medium", "large", "test", "char", "cpu-hour", "awd"}


def test_command_line_strings_are_coerced_to_field_types():
    config = apply_overrides(preset("small"), {"hidden-size": "300", "keep_prob": "0.5"}, "cli")
    assert config.hidden_size == 300 and config.keep_prob == 0.5


@pytest.mark.parametrize("overrides, message", [
    ({"hiden_size": 3}, "cli: unknown config field 'hiden_size'"),
    ({"hidden_size": "many"}, "cli: config field hidden_size must be int, got 'many'"),
    ({"hidden_size": -5}, "cli: config field hidden_size must be positive, got -5"),
    ({"batch_size": 0}, "cli: config field batch_size must be positive, got 0"),
    ({"keep_prob": 0}, "cli: config field keep_prob must be in (0, 1], got 0.0"),
    ({"keep_prob": 1.5}, "cli: config field keep_prob must be in (0, 1], got 1.5"),
    ({"learning_rate": "nan"}, "cli: config field learning_rate must be a positive number"),
    ({"cell": "lstmx"}, "cli: config field cell must be one of lstm, gru, rnn, got 'lstmx'"),
    ({"num_layers": 2.5}, "cli: config field num_layers must be int, got 2.5"),
    ({"init": "zaremba", "cell": "gru"},
     "cli: config field init 'zaremba' says how the LSTM's biases start; it applies to the lstm "
     "cell only (cell is gru)"),
    ({"init": "xavier"}, "cli: config field init must be one of uniform, tutorial, zaremba, awd"),
])
def test_invalid_override_is_one_line_naming_field(overrides, message):
    with pytest.raises(UserError) as err:
        apply_overrides(preset("small"), overrides, "cli")
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_unknown_preset_lists_the_choices():
    with pytest.raises(UserError, match="unknown preset 'huge'; choose one of small, medium"):
        preset("huge")


def test_toml_and_json_config_files(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text("hidden_size = 64\nkeep_prob = 0.9\n")
    js = tmp_path / "c.json"
    js.write_text(json.dumps({"num_layers": 1}))
    config = apply_overrides(preset("small"), load_config_file(toml), str(toml))
    config = apply_overrides(config, load_config_file(js), str(js))
    assert (config.hidden_size, config.keep_prob, config.num_layers) == (64, 0.9, 1)


@pytest.mark.parametrize("name, text, message", [
    ("bad.toml", "hidden_size = = 3", "invalid TOML"),
    ("bad.json", "{\"a\": ", "invalid JSON"),
    ("bad.yaml", "a: 1", "config file must end in .toml or .json"),
    ("list.json", "[1, 2]", "config file must hold a table of fields"),
    ("nested.toml", "[model]\nhidden_size = 3\n", "must be a flat table"),
])
def test_malformed_config_file_names_the_file(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(UserError) as err:
        load_config_file(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config_file(tmp_path / "nope.toml")
