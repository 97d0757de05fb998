"""The trainer: exact resume, schedule, logging, refusing to clobber a run."""
import dataclasses
import json

import pytest
import torch

from adaptive_lm.data import TokenStream, lm_batch
from adaptive_lm.errors import UsageError
from adaptive_lm.lm import lm_objective
from adaptive_lm.model import TransformerLM
from adaptive_lm.train import TrainConfig, lr_at, train


def _setup(tiny_cfg, seed=0):
    torch.manual_seed(seed)
    model = TransformerLM(dataclasses.replace(tiny_cfg, dropout=0.1))   # dropout: resume must restore the RNG
    stream = TokenStream(torch.randint(0, 61, (4000,), generator=torch.Generator().manual_seed(9)), 16)
    cfg = TrainConfig(steps=12, batch_size=4, grad_accum=2, lr=1e-2, warmup_steps=3, eval_every=0,
                      save_every=4, log_every=1, seed=seed)
    batches = lambda s, m, r, w: lm_batch(stream, cfg.batch_size, seed=cfg.seed, step=s, micro=m,
                                          n_micro=cfg.grad_accum, rank=r, world=w)
    return model, cfg, batches


def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, tiny_cfg):
    m1, cfg, b1 = _setup(tiny_cfg)
    train(m1, lm_objective, b1, cfg=cfg, out_dir=tmp_path / "a", progress=False)
    m2, cfg2, b2 = _setup(tiny_cfg)
    train(m2, lm_objective, b2, cfg=cfg2, out_dir=tmp_path / "b", progress=False, stop_at=5)
    m3, cfg3, b3 = _setup(tiny_cfg, seed=0)
    with torch.no_grad():                       # prove resume really loads the weights
        for p in m3.parameters():
            p.zero_()
    train(m3, lm_objective, b3, cfg=cfg3, out_dir=tmp_path / "b", progress=False, resume=True)
    for (k, p1), p3 in zip(m1.state_dict().items(), m3.state_dict().values()):
        assert torch.equal(p1, p3), k
    la = [json.loads(l) for l in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(l) for l in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lb] == list(range(1, 13))       # the log continues without duplicates
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]


def test_loss_goes_down_and_eval_is_logged(tmp_path, tiny_cfg):
    torch.manual_seed(0)
    model = TransformerLM(tiny_cfg)
    data = torch.arange(40).repeat(100) % 61                       # a learnable pattern
    stream = TokenStream(data, 16)
    cfg = TrainConfig(steps=40, batch_size=8, lr=1e-2, warmup_steps=5, eval_every=20, save_every=0, log_every=10)
    vx, vy = stream.eval_windows(4)
    from adaptive_lm.lm import evaluate_lm
    last = train(model, lm_objective, lambda s, m, r, w: lm_batch(stream, 8, seed=0, step=s), cfg=cfg,
                 out_dir=tmp_path, progress=False, eval_fn=lambda m: evaluate_lm(m, vx, vy))
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < 0.5 * losses[0]
    assert [r["step"] for r in rows if "val_loss" in r] == [20, 40]
    assert last["val_loss"] < 1.0
    assert (tmp_path / "checkpoint" / "model.safetensors").exists()


def test_a_second_run_into_the_same_folder_is_refused(tmp_path, tiny_cfg):
    m, cfg, b = _setup(tiny_cfg)
    train(m, lm_objective, b, cfg=cfg, out_dir=tmp_path, progress=False, stop_at=4)
    before = (tmp_path / "checkpoint" / "model.safetensors").read_bytes()
    with pytest.raises(UsageError, match="--resume"):
        train(m, lm_objective, b, cfg=cfg, out_dir=tmp_path, progress=False)
    assert (tmp_path / "checkpoint" / "model.safetensors").read_bytes() == before


def test_resume_survives_a_log_line_cut_short(tmp_path, tiny_cfg):
    m, cfg, b = _setup(tiny_cfg)
    train(m, lm_objective, b, cfg=cfg, out_dir=tmp_path, progress=False, stop_at=4)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "loss": 2.')                       # a kill in the middle of a write
    m2, cfg2, b2 = _setup(tiny_cfg)
    train(m2, lm_objective, b2, cfg=cfg2, out_dir=tmp_path, progress=False, resume=True, stop_at=6)
    steps = [json.loads(l)["step"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_lr_schedule_warmup_then_cosine_to_floor():
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(100, cfg) == pytest.approx(0.1)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 99))


def test_batch_must_divide_into_micro_batches(tmp_path, tiny_cfg):
    m, cfg, b = _setup(tiny_cfg)
    cfg.grad_accum = 3
    with pytest.raises(UsageError, match="divide"):
        train(m, lm_objective, b, cfg=cfg, out_dir=tmp_path, progress=False)


def test_autocast_dtype_follows_the_precision_and_the_hardware(monkeypatch):
    import adaptive_lm.train as T
    assert T.autocast_dtype("bf16", "cpu") is torch.bfloat16
    assert T.autocast_dtype("fp32", "cuda:0") is None
    for fast in (True, False):
        monkeypatch.setattr(T, "cpu_has_fast_bf16", lambda: fast)
        assert T.autocast_dtype("auto", "cpu") is (torch.bfloat16 if fast else None)
    for fast in (True, False):                   # a GPU that only emulates bf16 trains in fp32
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: fast or including_emulation)
        assert T.autocast_dtype("auto", "cuda:0") is (torch.bfloat16 if fast else None)


def test_a_resumed_save_moves_files_it_does_not_write_aside(tmp_path, tiny_cfg, capsys):
    """calm.json, an exit classifier, notes: written for the earlier weights, kept beside, never lost."""
    m, cfg, b = _setup(tiny_cfg)
    train(m, lm_objective, b, cfg=cfg, out_dir=tmp_path, progress=False, stop_at=4)
    ck = tmp_path / "checkpoint"
    (ck / "calm.json").write_text('{"threshold": 0.5}')
    (ck / "notes.txt").write_text("mine")
    m2, cfg2, b2 = _setup(tiny_cfg)
    train(m2, lm_objective, b2, cfg=dataclasses.replace(cfg2, save_every=100), out_dir=tmp_path, progress=False,
          resume=True)
    kept = tmp_path / "checkpoint.before-step12"
    assert sorted(p.name for p in kept.iterdir()) == ["calm.json", "notes.txt"]      # the trainer's own files stay
    assert (kept / "calm.json").read_text() == '{"threshold": 0.5}' and (kept / "notes.txt").read_text() == "mine"
    assert not (ck / "calm.json").exists() and (ck / "model.safetensors").exists()
    assert "calm.json, notes.txt" in capsys.readouterr().err


def test_bad_optimizer_settings_and_a_nan_loss_are_one_clear_error(tmp_path, tiny_cfg):
    from adaptive_lm.errors import AdaptiveLMError, CheckpointError
    for bad in ({"lr": float("nan")}, {"lr": float("inf")}, {"beta1": 2.0}, {"beta2": -0.1},
                {"min_lr_ratio": 1.5}, {"weight_decay": float("nan")}):
        with pytest.raises(UsageError, match=next(iter(bad))):
            TrainConfig(**bad)
    m, cfg, b = _setup(tiny_cfg)
    nan_objective = lambda model, batch: (lm_objective(model, batch)[0] * float("nan"), {})
    with pytest.raises(AdaptiveLMError, match="loss is nan at step 1"):
        train(m, nan_objective, b, cfg=cfg, out_dir=tmp_path / "nan", progress=False)
    assert not (tmp_path / "nan" / "checkpoint").exists()                 # NaN weights never saved
    m, cfg, b = _setup(tiny_cfg)
    train(m, lm_objective, b, cfg=cfg, out_dir=tmp_path / "r", progress=False, stop_at=4)
    (tmp_path / "r" / "checkpoint" / "trainer_state.json").write_text("{}")
    with pytest.raises(CheckpointError, match="corrupt trainer state"):
        train(m, lm_objective, b, cfg=cfg, out_dir=tmp_path / "r", progress=False, resume=True)


def test_resuming_a_finished_run_says_so(tmp_path, tiny_cfg, capsys):
    m, cfg, b = _setup(tiny_cfg)
    train(m, lm_objective, b, cfg=cfg, out_dir=tmp_path, progress=False)
    train(m, lm_objective, b, cfg=cfg, out_dir=tmp_path, progress=False, resume=True)
    assert "already at step 12 of 12: nothing to do" in capsys.readouterr().err


def test_ctrl_c_finishes_the_step_saves_and_resumes_exactly(tmp_path, tiny_cfg, capsys):
    import os
    import signal
    m1, cfg, b1 = _setup(tiny_cfg)
    cfg = dataclasses.replace(cfg, save_every=100)                      # no periodic save before the end
    train(m1, lm_objective, b1, cfg=cfg, out_dir=tmp_path / "a", progress=False)
    m2, _, b2 = _setup(tiny_cfg)

    def interrupted(step, micro, rank, world):                          # Ctrl-C while step 5 is built
        if step == 5 and micro == 0:
            os.kill(os.getpid(), signal.SIGINT)
        return b2(step, micro, rank, world)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (a background job ignores it)
    try:
        with pytest.raises(KeyboardInterrupt):
            train(m2, lm_objective, interrupted, cfg=cfg, out_dir=tmp_path / "b", progress=False)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler    # the handler is put back
    finally:
        signal.signal(signal.SIGINT, before)
    state = json.loads((tmp_path / "b" / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 6 and "saved at step 6" in capsys.readouterr().err
    m3, _, b3 = _setup(tiny_cfg)
    train(m3, lm_objective, b3, cfg=cfg, out_dir=tmp_path / "b", progress=False, resume=True)
    for (k, p1), p3 in zip(m1.state_dict().items(), m3.state_dict().values()):
        assert torch.equal(p1, p3), k


def test_resuming_with_another_model_or_recipe_names_what_differs(tmp_path, tiny_cfg):
    from adaptive_lm.errors import CheckpointError
    m, cfg, b = _setup(tiny_cfg)
    train(m, lm_objective, b, cfg=cfg, out_dir=tmp_path, progress=False, stop_at=4, meta={"recipe": "a"})
    with pytest.raises(CheckpointError, match="recipe 'a' -> 'b'"):
        train(m, lm_objective, b, cfg=cfg, out_dir=tmp_path, progress=False, resume=True, meta={"recipe": "b"})
    wider = TransformerLM(dataclasses.replace(tiny_cfg, n_layer=tiny_cfg.n_layer + 1))
    with pytest.raises(CheckpointError, match=f"model.n_layer {tiny_cfg.n_layer} -> {tiny_cfg.n_layer + 1}"):
        train(wider, lm_objective, b, cfg=cfg, out_dir=tmp_path, progress=False, resume=True, meta={"recipe": "a"})


def test_resuming_with_changed_data_settings_warns(tmp_path, tiny_cfg, capsys):
    m, cfg, b = _setup(tiny_cfg)
    train(m, lm_objective, b, cfg=cfg, out_dir=tmp_path, progress=False, stop_at=4,
          meta={"data": {"seq_len": 32, "eval_windows": 8}})
    train(m, lm_objective, b, cfg=cfg, out_dir=tmp_path, progress=False, resume=True, stop_at=8,
          meta={"data": {"seq_len": 32, "eval_windows": 4}})
    assert "warning" not in capsys.readouterr().err                     # held-out windows: harmless
    train(m, lm_objective, b, cfg=cfg, out_dir=tmp_path, progress=False, resume=True,
          meta={"data": {"seq_len": 16, "eval_windows": 4}})
    assert "changed settings ['data.seq_len']" in capsys.readouterr().err
