"""Checkpoint files: atomic writes, refusals with exact messages, header checks, model_meta ranges."""

import pytest
import torch
import torch.nn as nn

from ltadv import checkpoint as ck
from ltadv.checkpoint import CheckpointError


class Evil:
    pass


def net(c=3):
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, c))


def test_state_round_trip_and_required(tmp_path):
    p = tmp_path / "sub" / "last.pt"
    ck.save_state(p, {"epoch": 3, "model": {"w": torch.ones(2)}})
    s = ck.load_state(p, required=("epoch", "model"))
    assert s["epoch"] == 3 and torch.equal(s["model"]["w"], torch.ones(2))
    assert [q.name for q in p.parent.iterdir()] == ["last.pt"]  # no temp file left
    with pytest.raises(CheckpointError, match=r"is not an ltadv training state \(no rng, optimizer\)$"):
        ck.load_state(p, required=("rng", "optimizer"))
    assert ck.STATE_KEYS == ("model", "optimizer", "rng", "epoch", "config", "class_counts")


def test_load_state_refusals(tmp_path):
    with pytest.raises(CheckpointError, match=r"^checkpoint not found: "):
        ck.load_state(tmp_path / "none.pt")
    lst = tmp_path / "list.pt"
    torch.save([1, 2], lst)
    with pytest.raises(CheckpointError, match=r"holds a list, not a training state$"):
        ck.load_state(lst)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage, not a zip")
    with pytest.raises(CheckpointError, match=r"^cannot load checkpoint .*bad.pt \(damaged or truncated\?\): "):
        ck.load_state(bad)
    evil = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, evil)  # an arbitrary object: not weights-only
    with pytest.raises(CheckpointError, match=r"^refusing checkpoint .*evil.pt: it asks to unpickle objects"):
        ck.load_state(evil)


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    p = tmp_path / "f.txt"
    p.write_text("old")

    def fail(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise KeyError("boom")

    with pytest.raises(KeyError):
        ck.atomic_write(p, fail)
    assert p.read_text() == "old" and [q.name for q in tmp_path.iterdir()] == ["f.txt"]

    def full(tmp):
        raise OSError(28, "No space left on device")

    with pytest.raises(Exception, match="No space left") as e:
        ck.atomic_write(p, full)
    assert not isinstance(e.value, OSError) or "f.txt" in str(e.value)
    assert p.read_text() == "old"
    ck.atomic_write(p, lambda tmp: open(tmp, "w").write("new"))
    assert p.read_text() == "new"


def test_weights_round_trip_and_mismatch_messages(tmp_path):
    a, b = net(), net()
    p = tmp_path / "w.safetensors"
    ck.save_weights(p, a)
    ck.load_weights(p, b)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert ck.header_shapes(p) == {"0.weight": (5, 4), "0.bias": (5,), "2.weight": (3, 5), "2.bias": (3,)}
    with pytest.raises(CheckpointError, match=r"from another model or class count \(shape of 2.weight is \(3, 5\), "
                                              r"the model described with it has \(7, 5\)\)$"):
        ck.load_weights(p, net(7))
    with pytest.raises(CheckpointError, match=r"\(missing \['1.bias', '1.weight'\]\)$"):
        ck.check_header(p, {**ck.header_shapes(p), "1.weight": (1,), "1.bias": (1,)})
    with pytest.raises(CheckpointError, match=r"\(unexpected \['2.bias'\]\)$"):
        ck.check_header(p, {k: v for k, v in ck.header_shapes(p).items() if k != "2.bias"})
    with pytest.raises(CheckpointError, match=r"^weights not found: "):
        ck.load_weights(tmp_path / "nope.safetensors", b)
    with pytest.raises(CheckpointError, match=r"^weights not found: "):
        ck.header_shapes(tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 3)
    with pytest.raises(CheckpointError, match=r"^cannot read weights .*junk.safetensors: Error while deserializing "
                                              r"header: header too small$"):
        ck.header_shapes(junk)


def test_load_matching_message():
    m = net()
    with pytest.raises(CheckpointError, match=r"^checkpoint src is from another model or class count "
                                              r"\(shape of 0.bias is \(6,\), model has \(5,\)\)$"):
        ck.load_matching(m, {**m.state_dict(), "0.bias": torch.zeros(6)}, "src")


META = {"num_classes": 10, "in_channels": 3, "image_size": 32, "head": "linear", "mean": [0.5, 0.5, 0.5],
        "std": [0.2, 0.2, 0.2]}


@pytest.mark.parametrize("change,msg", [
    ({"num_classes": 0}, r"num_classes must be an integer in \[1, 100000\], got 0"),
    ({"num_classes": 100_001}, r"num_classes must be an integer in \[1, 100000\], got 100001"),
    ({"num_classes": True}, r"num_classes must be an integer.*"),
    ({"in_channels": 65}, r"in_channels must be an integer in \[1, 64\], got 65"),
    ({"image_size": 4097}, r"image_size must be an integer in \[1, 4096\], got 4097"),
    ({"image_size": 2.0}, r"image_size must be an integer.*"),
    ({"head": "mlp"}, r"head must be linear or cosine, got 'mlp'"),
    ({"mean": [0.5, 0.5]}, r"mean must be 3 numbers \(one per channel\), got \[0.5, 0.5\]"),
    ({"mean": [0.5, 0.5, True]}, r"mean must be 3 numbers.*"),
    ({"std": [0.2, 0.2, 1e6]}, r"std must be 3 numbers.*"),
    ({"std": "abc"}, r"std must be 3 numbers.*"),
    ({"std": [0.2, 0.0, 0.2]}, r"std must be > 0, got \[0.2, 0.0, 0.2\]"),
])
def test_check_model_meta_rejects(change, msg):
    with pytest.raises(CheckpointError, match=r"^run.json: model_meta " + msg + "$"):
        ck.check_model_meta({**META, **change}, "run.json")


def test_check_model_meta_accepts_bounds_and_names_missing_keys():
    ck.check_model_meta({**META, "num_classes": 100_000, "in_channels": 64, "image_size": 1, "head": "cosine",
                         "mean": [0, 1, -999999.0] + [0.5] * 61, "std": [0.1] * 64}, "x")
    ck.check_model_meta({**META, "num_classes": 1, "in_channels": 1, "mean": [0.1], "std": [0.3]}, "x")
    with pytest.raises(CheckpointError, match=r"^x: model_meta has no 'std'$"):
        ck.check_model_meta({k: v for k, v in META.items() if k != "std"}, "x")
    with pytest.raises(CheckpointError, match=r"^x: model_meta is a list, not a mapping$"):
        ck.check_model_meta([], "x")


def test_atomic_write_errors_become_one_save_error(tmp_path):
    from ltadv.results import SaveError

    p = tmp_path / "a" / "b" / "f.pt"  # two new folders: parents are made
    names = []

    def disk_full(tmp):
        names.append(tmp)
        raise OSError(28, "No space left on device")

    with pytest.raises(SaveError, match=r"^cannot write .*f.pt: No space left on device; the previous version of "
                                        r"the file is intact$") as e:
        ck.atomic_write(p, disk_full)
    assert e.value.errno == 28
    assert names[0].startswith(str(p.parent / ".f.pt."))  # the temp file sits beside the target, hidden
    assert list(p.parent.iterdir()) == []

    def torch_wrapped(tmp):
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: No space left on device")

    with pytest.raises(SaveError, match=r"^cannot write .*f.pt: No space left on device; the previous") as e:
        ck.atomic_write(p, torch_wrapped)
    assert e.value.errno == 28

    def other_runtime(tmp):
        raise RuntimeError("something else")

    with pytest.raises(RuntimeError, match=r"^something else$"):
        ck.atomic_write(p, other_runtime)

    def removes_its_tmp(tmp):
        import os

        os.unlink(tmp)
        raise KeyError("own error")

    with pytest.raises(KeyError, match="own error"):  # not FileNotFoundError from the clean-up
        ck.atomic_write(p, removes_its_tmp)


def test_atomic_write_folder_that_cannot_be_made(tmp_path):
    from ltadv.results import SaveError

    (tmp_path / "file").write_text("x")
    with pytest.raises(SaveError, match=r"^cannot write .*file/sub/f.pt: .*; the previous version"):
        ck.atomic_write(tmp_path / "file" / "sub" / "f.pt", lambda tmp: None)


def test_load_state_map_location_and_messages(tmp_path):
    p = tmp_path / "s.pt"
    ck.save_state(p, {"x": torch.ones(2)})
    assert ck.load_state(p, map_location="meta")["x"].is_meta
    assert ck.load_state(p)["x"].device.type == "cpu"
    evil = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, evil)
    with pytest.raises(CheckpointError, match=r"\(WeightsUnpickler error: Unsupported global: GLOBAL .*Evil was not "
                                              r"an allowed global by default.*\); it was not written by ltadv$"):
        ck.load_state(evil)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"\(damaged or truncated\?\): UnpicklingError: Please file an issue"):
        ck.load_state(bad)


def test_mismatch_names_at_most_two():
    assert ck._mismatch({"a": (1,), "b": (1,), "c": (1,)}, {}) == "missing ['a', 'b']"
    assert ck._mismatch({}, {"a": (1,), "b": (1,), "c": (1,)}) == "unexpected ['a', 'b']"
    assert ck._mismatch({"a": (1,)}, {"a": (1,)}) is None


def test_truncated_weights_name_the_file_and_the_reason(tmp_path):
    # the header is intact (names and shapes pass the check), the tensor data is 8 bytes short
    path = tmp_path / "w.safetensors"
    ck.save_weights(path, nn.Linear(4, 3))
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(CheckpointError) as e:
        ck.load_weights(path, nn.Linear(4, 3))
    # (check_header refuses it before load_file runs: the message is the header check's)
    assert str(e.value).startswith(f"cannot read weights {path}: ") and "not fully covered" in str(e.value)


@pytest.mark.parametrize("message,quoted", [
    ("bad magic number\nsecond line of the error", "RuntimeError: bad magic number"),  # no line names a global
    ("", "RuntimeError: "),  # an empty message: nothing to quote
])
def test_a_damaged_state_quotes_the_first_line_of_torchs_error(tmp_path, monkeypatch, message, quoted):
    path = tmp_path / "state.pt"
    path.write_bytes(b"not a checkpoint")

    def refuse(*_a, **_k):
        raise RuntimeError(message)

    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(CheckpointError) as e:
        ck.load_state(path)
    assert str(e.value) == f"cannot load checkpoint {path} (damaged or truncated?): {quoted}"
