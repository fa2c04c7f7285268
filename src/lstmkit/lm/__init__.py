"""The language model: config and presets, data, model, training, evaluation, generation, API."""
