"""Seeds, RNG capture/restore and the resume-config rule, on exact draws and exact messages."""

import random

import numpy as np
import pytest
import torch

from ltadv.reproducibility import (
    RESUME_MAY_CHANGE,
    ResumeConfigError,
    capture_rng,
    check_resume_config,
    config_differences,
    restore_rng,
    seed_everything,
    set_deterministic,
)


def draws():
    return random.random(), float(np.random.rand()), float(torch.rand(1)), float(np.random.randn())


def test_seed_everything_seeds_all_three_and_ranks_differ():
    seed_everything(7)
    a = draws()
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    assert draws() == a  # rank 0 is seeded exactly as a single process
    seed_everything(7, rank=1)
    b = draws()
    s = 7 + 1_000_003
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)
    assert draws() == b and b[0] != a[0] and b[1] != a[1] and b[2] != a[2]
    seed_everything(2**32 + 5)  # numpy takes the seed modulo 2^32
    c = draws()
    np.random.seed(5)
    assert c[1] == float(np.random.rand())


def test_capture_restore_round_trip_with_cached_gauss():
    seed_everything(3)
    np.random.randn()  # leaves numpy's cached second Gaussian
    random.gauss(0, 1)  # leaves python's cached Gaussian
    state = capture_rng()
    expected = draws() + (random.gauss(0, 1),)
    seed_everything(99)
    draws()
    restore_rng(state)
    assert draws() + (random.gauss(0, 1),) == expected
    assert state["numpy"]["has_gauss"] == 1 and isinstance(state["numpy"]["cached"], float)
    assert state["python"]["state"].dtype == torch.int64 and state["numpy"]["keys"].dtype == torch.int64


def test_capture_is_weights_only_loadable(tmp_path):
    seed_everything(1)
    torch.save(capture_rng(), tmp_path / "rng.pt")
    state = torch.load(tmp_path / "rng.pt", weights_only=True)
    expected = draws()
    seed_everything(2)
    restore_rng(state)
    assert draws() == expected


def test_restore_partial_and_none():
    seed_everything(4)
    state = capture_rng()
    t = float(torch.rand(1))
    seed_everything(5)
    py, npy = random.random(), float(np.random.rand())
    seed_everything(5)
    restore_rng({"torch": state["torch"]})  # an older checkpoint: python and numpy left as they are
    assert float(torch.rand(1)) == t and random.random() == py and float(np.random.rand()) == npy
    restore_rng(None)


def test_set_deterministic_round_trip(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        torch.backends.cudnn.benchmark = True
        set_deterministic(True)
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        import os

        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        set_deterministic(False)
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic


def test_set_deterministic_off_leaves_env(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    set_deterministic(False)
    import os

    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ


SAVED = {"seed": 0, "method": {"name": "at", "tau_b": 1.0}, "train": {"device": "cpu", "epochs": 5}}


def test_config_differences_nested():
    given = {"seed": 0, "method": {"name": "at", "tau_b": 1.5}, "train": {"device": "cuda", "epochs": 5},
             "extra": {"k": 1}}
    assert config_differences(SAVED, given) == [("extra.k", None, 1), ("method.tau_b", 1.0, 1.5),
                                                ("train.device", "cpu", "cuda")]
    assert config_differences(SAVED, SAVED) == []


def test_check_resume_config_messages():
    check_resume_config(SAVED, {**SAVED, "train": {"device": "cuda", "epochs": 5}}, "runs/x")  # allowed
    with pytest.raises(ResumeConfigError, match=r"^cannot resume runs/x with a different configuration: "
                       r"method.tau_b is 1.0 in the run, 2.0 given; resume with"):
        check_resume_config(SAVED, {**SAVED, "method": {"name": "at", "tau_b": 2.0}}, "runs/x")
    with pytest.raises(ResumeConfigError, match=r"method.name is 'at' in the run, 'mart' given \(and 1 more\);"):
        check_resume_config(SAVED, {**SAVED, "method": {"name": "mart", "tau_b": 2.0}}, "runs/x")
    assert issubclass(ResumeConfigError, ValueError)
    assert RESUME_MAY_CHANGE == {"train.device", "train.progress", "train.log_every", "data.root",
                                 "eval.max_batches", "eval.batch_size", "eval.attacks", "eval.n", "eval.checkpoints"}


def test_cuda_generator_states_are_captured_and_restored_per_device(monkeypatch):
    # A CPU-only machine has no CUDA generator, so torch.cuda is replaced by a fake with 2 devices whose
    # states are distinct tensors: capture must store them all, restore must hand back at most as many as
    # there are devices now (a checkpoint from 3 GPUs restored on 2), and nothing when CUDA is absent.
    states = [torch.tensor([1, 2], dtype=torch.uint8), torch.tensor([3, 4], dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: list(states))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda s: restored.append([t.tolist() for t in s]))
    state = capture_rng()
    assert [t.tolist() for t in state["cuda"]] == [[1, 2], [3, 4]]
    state["cuda"] = state["cuda"] + [torch.tensor([5, 6], dtype=torch.uint8)]  # saved on 3 devices
    restore_rng(state)
    assert restored == [[[1, 2], [3, 4]]]  # the first two, once
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "cuda" not in capture_rng()
    restore_rng(state)  # CUDA gone: the saved states are ignored
    assert len(restored) == 1
    del state["cuda"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    restore_rng(state)  # an older checkpoint without CUDA states: CUDA left as it is
    assert len(restored) == 1
