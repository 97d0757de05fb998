"""Run by test_distributed under torchrun (or plain python): train a tiny model, log losses."""
import sys

import torch

from adaptive_lm.data import TokenStream, lm_batch
from adaptive_lm.lm import lm_objective
from adaptive_lm.model import ModelConfig, TransformerLM
from adaptive_lm.train import TrainConfig, train

out = sys.argv[1]
torch.set_num_threads(1)
torch.manual_seed(0)
model = TransformerLM(ModelConfig(vocab_size=50, n_layer=2, n_head=2, d_model=32, max_seq_len=32))
stream = TokenStream(torch.arange(5000) % 37, 16)   # a learnable pattern
cfg = TrainConfig(steps=6, batch_size=8, lr=1e-2, warmup_steps=2, eval_every=0, save_every=0, log_every=1)
train(model, lm_objective, lambda s, m, r, w: lm_batch(stream, 8, seed=0, step=s, rank=r, world=w),
      cfg=cfg, out_dir=out, progress=False)
