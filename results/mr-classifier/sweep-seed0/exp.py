import sys, time, torch
torch.set_num_threads(1)
from lstmkit.classify.config import ClassifierConfig, apply_overrides
from lstmkit.classify import api
over = dict(a.split("=",1) for a in sys.argv[1:])
cfg = apply_overrides(ClassifierConfig(), over, "cli")
t=time.time()
r = api.train(cfg, "/work/shared/data/mr", None)
print("RESULT", over, "best_epoch", r.best_epoch, "valid", round(r.valid_accuracy,4), "test", round(r.test_accuracy,4), "time", round(time.time()-t))
