"""Models: the recurrent language model and the building blocks it shares."""
