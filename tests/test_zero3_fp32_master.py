"""fp32 ZeRO-3 keeps one copy of each rank's parameter partition (``train.share_fp32_master``,
:func:`zerolm.pretrain.engine.share_fp32_master`), on 2 real gloo ranks (``tests/elastic_engine_worker.py``).

Independent references: the same run with DeepSpeed's own copy (``share_fp32_master=false``) for the
losses and weights (bitwise), DeepSpeed's per-parameter partition sizes (``ds_tensor``) for the bytes
freed, the storages the optimizer's tensors really point at for the bytes held, and the checkpoint files
the unshared run writes for their size. A universal load at another world size with sharing on is
covered by ``tests/test_elastic_engine.py`` (its ZeRO-3 2 → 1 rank case; sharing is the default).
"""

from __future__ import annotations

import pytest
import torch

from test_elastic_engine import _launch


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("share_master")
    _launch(out, "share", 2, [{"kind": "share_master", "share": False}, {"kind": "share_master", "share": True},
                              {"kind": "share_resume"}])
    return out


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def test_losses_and_weights_are_bitwise_those_of_deepspeeds_copy(runs):
    off = _load(runs / "w2_z3_share0" / "run_rank0.pt")
    on = _load(runs / "w2_z3_share1" / "run_rank0.pt")
    assert off["freed"] == 0
    assert on["losses"] == off["losses"], (on["losses"], off["losses"])
    assert set(on["weights"]) == set(off["weights"])
    for name, w in off["weights"].items():
        assert torch.equal(on["weights"][name], w), name
    # the optimizer moved the weights, so equality is not that of two runs that did nothing
    assert all(torch.equal(on["weights0"][n], off["weights0"][n]) for n in off["weights0"])
    moved = [float((on["weights"][n] - on["weights0"][n]).abs().max()) for n in on["weights0"]]
    assert min(moved) > 1e-4, moved


def test_memory_drops_by_one_fp32_partition(runs):
    off = _load(runs / "w2_z3_share0" / "run_rank0.pt")
    on = _load(runs / "w2_z3_share1" / "run_rank0.pt")
    partition = 4 * on["partition_numel"]  # fp32 bytes of this rank's partition of every parameter
    assert partition > 0 and on["partition_numel"] == off["partition_numel"]
    assert on["freed"] == partition
    # DeepSpeed's copy: working + master partitions = 2 copies; shared: 1, before and after training
    assert off["held_bytes"] == off["held_bytes_after"] == 2 * partition
    assert on["held_bytes"] == on["held_bytes_after"] == partition
    assert on["adam_keys_are_masters"] and off["adam_keys_are_masters"]


def test_checkpoint_is_the_same_and_resumes_bitwise(runs):
    on_root, off_root = runs / "w2_z3_share1" / "step_2", runs / "w2_z3_share0" / "step_2"
    optim = sorted(p.name for p in off_root.glob("*optim_states.pt"))
    assert len(optim) == 2 and optim == sorted(p.name for p in on_root.glob("*optim_states.pt"))
    for name in optim:
        # a saved master that were a view of a larger buffer would write the whole buffer
        size_on, size_off = (on_root / name).stat().st_size, (off_root / name).stat().st_size
        assert abs(size_on - size_off) <= 0.01 * size_off, (name, size_on, size_off)
        a, b = _load(on_root / name), _load(off_root / name)
        fa = a["optimizer_state_dict"]["fp32_flat_groups"]
        fb = b["optimizer_state_dict"]["fp32_flat_groups"]
        assert len(fa) == len(fb) and all(torch.equal(x, y) for x, y in zip(fa, fb)), name
    run = _load(runs / "w2_z3_share1" / "run_rank0.pt")
    resumed = _load(runs / "w2_z3_share1" / "resumed.pt")
    assert resumed["shared_after_load"]
    assert resumed["losses"] == run["losses"][2:]
    for name, w in run["weights"].items():
        assert torch.equal(resumed["weights"][name], w), name
