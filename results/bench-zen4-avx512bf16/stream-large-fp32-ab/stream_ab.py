"""The batch-1 stream in fp32, interleaved: lstmkit's evaluation step with its softmax layer's
products through oneDNN (as shipped on AMD CPUs) and on torch.mm, and the plain fp32 baseline
(bench/throughput.py's runners), 6 windows of 100 tokens a repetition. Words/s."""
import sys, statistics, torch
sys.path.insert(0, "bench")
import throughput as tp
from lstmkit.fields import apply_overrides
from lstmkit.lm.config import preset
from lstmkit.lm.batching import batch_rows, bptt_windows
from lstmkit.allocator import keep_freed_memory
from lstmkit.nn import products
keep_freed_memory()
name = sys.argv[1]
config = apply_overrides(preset(name), {"precision": "fp32"}, "bench")
ids, V = tp.corpus("../shared/data/ptb")
torch.manual_seed(0)
ours = tp.lstmkit_runner(config, V, False)[1]
plain = tp.baseline_runner(config, V, "fp32")[1]
wins = list(bptt_windows(batch_rows(ids[:20_001], 1), 100))[:6]
orig = products.onednn_fp32_products
res = {"ours_onednn": [], "ours_mm": [], "plain": []}
for w in (ours, plain): tp.timed_eval(w, wins[:2])
for rep in range(9):
    products.onednn_fp32_products = orig
    res["ours_onednn"].append(tp.timed_eval(ours, wins))
    res["plain"].append(tp.timed_eval(plain, wins))
    products.onednn_fp32_products = lambda: False
    res["ours_mm"].append(tp.timed_eval(ours, wins))
for k, v in res.items():
    print(k, round(statistics.median(v)), [round(x) for x in v])
