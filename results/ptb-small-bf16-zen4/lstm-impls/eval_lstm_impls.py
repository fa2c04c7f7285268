"""Test perplexity of a saved run with each LSTM layer: lstmkit's (auto, in a kept block) and
oneDNN's, in bf16 and fp32, on the stream and at batch 10 x 50."""
import sys

from lstmkit.lm.api import ptb_files
from lstmkit.lm.evaluate import perplexity, stream_perplexity
from lstmkit.lm.data import encode_file
from lstmkit.lm.runs import load_lm

run, data_dir = sys.argv[1], sys.argv[2]
loaded = load_lm(run, "cpu")
ids = encode_file(loaded.vocab, ptb_files(data_dir)["test_file"], loaded.level)
for precision in ("bf16", "fp32"):
    for impl in ("auto", "onednn"):
        loaded.model.lstm_impl = impl
        stream = stream_perplexity(loaded.model, ids, precision)
        batch = perplexity(loaded.model, ids, 10, 50, precision)
        print(f"{precision} {impl:7s} {loaded.model.describe_recurrent(ids.device, precision == 'bf16'):8s}"
              f" stream {stream.value:.3f}  batch 10x50 {batch.value:.3f}", flush=True)
