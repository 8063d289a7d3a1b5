"""Energy, CO2e and cost while a run trains (codecarbon, ``tracking.emissions``), what the run records
of itself (per-rank memory, step time, MFU) in ``result.json``, and the model card's
``co2_eq_emissions``: a real 2-rank run, its resume, its export; a tracker that fails never fails a run."""

from __future__ import annotations

import json
import logging
import time

import pytest

from test_pretrain import base_args, result, run  # noqa: F401 - fixture
from zerolm.config import EmissionsConfig, load_config
from zerolm.errors import ConfigError
from zerolm.pretrain import checkpoint as ckpt
from zerolm.pretrain import distributed
from zerolm.pretrain.emissions import EnergyMeter, card_co2

INTENSITY = 400.0  # g CO2e per kWh, forced: the CO2e must be exactly energy × 0.4 kg/kWh
PRICE = 3.0  # per device-hour
COMMON = ["tracking.emissions.enabled=true",  # the test configs turn the tracker off
          "train.eval_every=100", "train.eval_batches=2", "train.save_every=5", "train.log_every=2",
          f"tracking.emissions.grid_intensity_g_per_kwh={INTENSITY}", f"tracking.emissions.price_per_gpu_hour={PRICE}",
          "tracking.emissions.measure_power_secs=1"]


def _rows(run_dir):
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_run_measures_energy_adds_to_it_on_resume_and_its_card_carries_it(base_args, tmp_path):  # noqa: F811
    run_dir = tmp_path / "run"
    t0 = time.monotonic()
    first = run(base_args, run_dir, "train.max_steps=10", *COMMON)
    wall = time.monotonic() - t0
    r = result(run_dir)
    e, co2 = r["train/energy_kwh"], r["train/co2_kg"]
    assert e > 0
    assert co2 == pytest.approx(e * INTENSITY / 1000.0, rel=1e-9), "CO2e = energy × the forced grid intensity"
    # cost = price × devices × hours trained; the trainer's hours are inside the command's wall time
    assert 0 < r["train/cost"] < PRICE * 2 * wall / 3600.0
    assert r["emissions"]["device_hours"] == pytest.approx(2 * r["emissions"]["hours"])
    assert "codecarbon" in r["emissions"]["method"] and "ranks" in r["emissions"]["hardware"]
    assert "kWh" in first.stderr + first.stdout and "g CO2e" in first.stderr + first.stdout
    # the figures grow along the run in metrics.jsonl (one tracker per node, summed once, not per rank)
    series = [row["train/energy_kwh"] for row in _rows(run_dir) if "train/energy_kwh" in row]
    assert len(series) == 5 and series == sorted(series) and series[-1] <= e
    # what the run measured of itself: per rank, a baseline below the peak; medians of the windows
    mem = r["memory"]
    assert len(mem["baseline_rss_gib"]) == len(mem["peak_rss_gib"]) == 2
    assert all(0 < b < p for b, p in zip(mem["baseline_rss_gib"], mem["peak_rss_gib"]))
    windows = [row for row in _rows(run_dir) if "train/step_time_s" in row][1:]  # the first is warm-up
    steps = sorted(w["train/step_time_s"] for w in windows)
    assert r["throughput"]["windows"] == len(windows) == 4
    assert r["throughput"]["step_time_s"] == pytest.approx((steps[1] + steps[2]) / 2)
    # the checkpoint records the totals so far; a resumed run adds to them
    rec = ckpt.read_record(run_dir / "checkpoints", "step_00000010")
    assert 0 < rec["emissions"]["energy_kwh"] <= e
    run(base_args, run_dir, "train.max_steps=14", *COMMON)
    r2 = result(run_dir)
    assert r2["train/energy_kwh"] > rec["emissions"]["energy_kwh"]
    assert r2["emissions"]["hours"] > rec["emissions"]["hours"]
    assert r2["train/co2_kg"] == pytest.approx(r2["train/energy_kwh"] * INTENSITY / 1000.0, rel=1e-9)
    # the export's card: Hub metadata co2_eq_emissions in grams, as huggingface_hub parses it
    from huggingface_hub import ModelCard

    from zerolm.pretrain.export import export_checkpoint

    export_checkpoint(run_dir, tmp_path / "hf")
    card = ModelCard.load(tmp_path / "hf" / "README.md", ignore_metadata_errors=False)
    got = card.data.co2_eq_emissions
    final = ckpt.read_record(run_dir / "checkpoints", "step_00000014")["emissions"]
    assert got["emissions"] == pytest.approx(1000.0 * final["co2_kg"], abs=1e-6)
    assert got["training_type"] == "pre-training" and "codecarbon" in got["source"]
    assert "kWh" in card.text


def _env(local_rank=0):
    return distributed.DistEnv(rank=local_rank, world_size=1, local_rank=local_rank, local_world_size=1,
                               launcher="single", master_addr="127.0.0.1", master_port=0)


def test_a_tracker_that_fails_is_a_warning_and_the_figures_stay(monkeypatch, caplog):
    import codecarbon

    class Broken:
        def __init__(self, **kw):
            raise RuntimeError("no power readings here")

    monkeypatch.setattr(codecarbon, "OfflineEmissionsTracker", Broken)
    with caplog.at_level(logging.WARNING, logger="zerolm.pretrain.emissions"):
        meter = EnergyMeter(EmissionsConfig(), _env())
        assert meter.totals() == {"train/energy_kwh": 0.0, "train/co2_kg": 0.0}
    assert "did not start" in caplog.text and "no power readings here" in caplog.text
    assert card_co2(meter.state()) is None, "nothing measured: no card metadata"

    class Flaky:  # starts, reads once, then fails: the last totals stay
        def __init__(self, **kw):
            self.n = 0

        def start(self):
            pass

        def flush(self):
            self.n += 1
            if self.n > 1:
                raise OSError("counter gone")

        def _prepare_emissions_data(self):
            return type("D", (), {"energy_consumed": 0.5, "emissions": 0.2})()

        def stop(self):
            pass

    monkeypatch.setattr(codecarbon, "OfflineEmissionsTracker", Flaky)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="zerolm.pretrain.emissions"):
        meter = EnergyMeter(EmissionsConfig(), _env(), prior={"energy_kwh": 1.0, "co2_kg": 0.5})
        assert meter.totals() == {"train/energy_kwh": 1.5, "train/co2_kg": 0.7}
        assert meter.totals() == {"train/energy_kwh": 1.5, "train/co2_kg": 0.7}
    assert "counter gone" in caplog.text


def test_only_local_rank_0_tracks_and_disabled_measures_nothing(monkeypatch):
    import codecarbon

    made = []
    monkeypatch.setattr(codecarbon, "OfflineEmissionsTracker", lambda **kw: made.append(kw))
    EnergyMeter(EmissionsConfig(), _env(local_rank=1))
    assert made == [], "one tracker per node: local rank 0's"
    off = EnergyMeter(EmissionsConfig(enabled=False), _env())
    assert made == [] and off.totals() == {} and off.enabled is False


def test_a_bad_country_code_fails_before_any_work():
    with pytest.raises(ConfigError, match="country_iso_code"):
        load_config(None, ["tracking.emissions.country_iso_code=France"])
    with pytest.raises(ConfigError, match="pue"):
        load_config(None, ["tracking.emissions.pue=0.5"])
