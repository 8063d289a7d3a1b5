"""Energy, CO2e and cost of a training run, measured while it runs (``tracking.emissions``).

The measuring is codecarbon's (``OfflineEmissionsTracker``: never sends telemetry): one tracker per
node, on local rank 0, in ``machine`` mode, so it covers the node's CPUs, GPUs (NVML energy counters)
and RAM once, however many ranks the node runs. :meth:`EnergyMeter.totals` sums the nodes' figures
with one all-reduce (every rank calls it at the same step; the ranks without a tracker add zeros).
Where the hardware exposes no energy counters (this CPU machine: no RAPL) codecarbon estimates the
CPU's power from its load and a TDP table; :attr:`EnergyMeter.method` says which it did, and the
run's log, ``result.json`` and the model card repeat it.

The figures survive restarts: a checkpoint records the totals so far (:meth:`EnergyMeter.state`)
and a resumed run adds to them (energy spent since the last checkpoint of a crashed run is not
counted). A loss-spike rollback keeps them: the energy was spent.

A tracker that fails to start or to read is a warning, never an error: the run trains on and the
figures stop growing (``emissions/ok_nodes`` in the summary says how many nodes reported).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from zerolm.config import EmissionsConfig
from zerolm.pretrain import distributed

log = logging.getLogger(__name__)

#: What codecarbon's CPU tracking modes mean, for the log and the model card.
_CPU_METHODS = {
    "cpu_load": "CPU power estimated from its load × a TDP table (no RAPL energy counters)",
    "constant": "CPU power a TDP constant (no energy counters)",
    "intel_rapl": "CPU energy from RAPL counters",
}


def _hardware_text(conf: dict[str, Any], local_devices: int) -> str:
    gpus, gpu_model = conf.get("gpu_count") or 0, conf.get("gpu_model") or ""
    if gpus:
        return f"{gpus} × {gpu_model}".strip()
    return f"{conf.get('cpu_model') or 'CPU'} ({conf.get('cpu_count') or '?'} threads, {local_devices} ranks)"


class EnergyMeter:
    """Energy (kWh), CO2e (kg) and cost of this run, summed over nodes and restarts.

    Args:
        cfg: ``tracking.emissions``.
        env: this process's place in the job; the tracker runs where ``env.local_rank == 0``.
        device_type: ``"cuda"`` or ``"cpu"`` (for the hardware text on CPU-only nodes).
        prior: :meth:`state` as a resumed checkpoint recorded it, or None for a fresh run.

    All ranks must construct it, and call :meth:`totals` and :meth:`stop` at the same points
    (collectives). Never raises for a tracker problem (logged as a warning).
    """

    def __init__(self, cfg: EmissionsConfig, env: distributed.DistEnv, device_type: str = "cpu",
                 prior: dict[str, Any] | None = None) -> None:
        self.cfg, self.env = cfg, env
        prior = prior or {}
        self.prior = {k: float(prior.get(k) or 0.0) for k in ("energy_kwh", "co2_kg", "device_hours", "hours")}
        self.tracker = None
        self.method = prior.get("method") or "not measured"
        self.hardware = prior.get("hardware") or ""
        self.t0 = time.monotonic()
        self._last = {"energy_kwh": 0.0, "co2_kg": 0.0, "ok_nodes": 0.0}
        if cfg.enabled and env.local_rank == 0:
            try:
                self._start(device_type)
            except Exception as e:  # noqa: BLE001 - measuring must never fail a run
                log.warning("energy tracking (codecarbon) did not start: %s: %s; the run trains on without "
                            "energy/CO2 figures", type(e).__name__, e)
                self.tracker = None

    def _start(self, device_type: str) -> None:
        from codecarbon import OfflineEmissionsTracker

        logging.getLogger("codecarbon").setLevel(logging.ERROR)  # its INFO banner and multi-instance warning

        self.tracker = OfflineEmissionsTracker(
            country_iso_code=self.cfg.country_iso_code, region=self.cfg.region, pue=self.cfg.pue,
            measure_power_secs=self.cfg.measure_power_secs, tracking_mode="machine", save_to_file=False,
            log_level="error", project_name="zerolm",
            **({"force_carbon_intensity_g_co2e_kwh": self.cfg.grid_intensity_g_per_kwh}
               if self.cfg.grid_intensity_g_per_kwh is not None else {}))
        self.tracker.start()
        cpu_modes = [getattr(h, "_mode", None) for h in getattr(self.tracker, "_hardware", [])
                     if type(h).__name__ == "CPU"]
        conf = getattr(self.tracker, "_conf", {})
        parts = [_CPU_METHODS.get(m, f"CPU power by codecarbon's {m} mode") for m in cpu_modes if m]
        if conf.get("gpu_count"):
            parts.insert(0, "GPU energy from NVML counters")
        self.method = "codecarbon: " + ("; ".join(parts) or "RAM and CPU estimates")
        self.hardware = _hardware_text(conf, self.env.local_world_size)
        if device_type == "cpu" and conf.get("gpu_count"):
            self.hardware += " (GPUs present but not used)"

    @property
    def enabled(self) -> bool:
        """Whether this run measures at all (the config's ``enabled``; the same on every rank)."""
        return self.cfg.enabled

    def _read_local(self) -> tuple[float, float, float]:
        """This node's (kWh, kg CO2e, 1.0) since this process started, or zeros (no tracker here, or
        it failed: then it is dropped with a warning)."""
        if self.tracker is None:
            return 0.0, 0.0, 0.0
        try:
            self.tracker.flush()  # measures up to now
            data = self.tracker._prepare_emissions_data()  # codecarbon 3.3: the totals so far (kWh, kg)
            return float(data.energy_consumed), float(data.emissions), 1.0
        except Exception as e:  # noqa: BLE001
            log.warning("energy tracking (codecarbon) failed to read: %s: %s; energy figures stop here",
                        type(e).__name__, e)
            self.tracker = None
            return 0.0, 0.0, 0.0

    def totals(self) -> dict[str, float]:
        """The run's totals so far, over all nodes and earlier restarts (a collective: every rank
        calls it). Keys: ``train/energy_kwh``, ``train/co2_kg`` and, with a price,
        ``train/cost`` (price × devices × hours); empty when disabled.
        """
        if not self.enabled:
            return {}
        e, c, ok = self._read_local()
        e, c, ok = distributed.all_reduce_values([e, c, ok], "sum")
        if ok > 0 or not self._last["ok_nodes"]:
            self._last = {"energy_kwh": e, "co2_kg": c, "ok_nodes": ok}
        hours = (time.monotonic() - self.t0) / 3600.0
        out = {"train/energy_kwh": self.prior["energy_kwh"] + self._last["energy_kwh"],
               "train/co2_kg": self.prior["co2_kg"] + self._last["co2_kg"]}
        if self.cfg.price_per_gpu_hour is not None:
            device_hours = self.prior["device_hours"] + hours * self.env.world_size
            out["train/cost"] = self.cfg.price_per_gpu_hour * device_hours
        return out

    def state(self) -> dict[str, Any]:
        """What a checkpoint records (a collective, as :meth:`totals`): the totals so far and how
        they were measured, so a resumed run adds to them."""
        t = self.totals()
        hours = (time.monotonic() - self.t0) / 3600.0
        return {"energy_kwh": t.get("train/energy_kwh", 0.0), "co2_kg": t.get("train/co2_kg", 0.0),
                "hours": self.prior["hours"] + hours, "device_hours": self.prior["device_hours"] + hours * self.env.world_size,
                "method": self.method, "hardware": self.hardware, "country_iso_code": self.cfg.country_iso_code,
                "region": self.cfg.region, "grid_intensity_g_per_kwh": self.cfg.grid_intensity_g_per_kwh,
                "pue": self.cfg.pue,
                **({"cost": t["train/cost"], "price_per_gpu_hour": self.cfg.price_per_gpu_hour} if "train/cost" in t else {})}

    def stop(self) -> None:
        """Stop this node's tracker (its scheduler thread); never raises."""
        if self.tracker is not None:
            try:
                self.tracker.stop()
            except Exception as e:  # noqa: BLE001
                log.warning("energy tracking (codecarbon) did not stop cleanly: %s", e)
            self.tracker = None


def summary_line(state: dict[str, Any]) -> str:
    """One console line for a run's :meth:`EnergyMeter.state`, e.g. ``energy 0.0021 kWh | 0.81 g CO2e
    (USA grid, PUE 1.0) | codecarbon: CPU power estimated …``."""
    co2_g = 1000.0 * float(state.get("co2_kg") or 0.0)
    where = state.get("country_iso_code") or "?"
    if state.get("region"):
        where += f"/{state['region']}"
    where += " grid" if state.get("grid_intensity_g_per_kwh") is None else f" at {state['grid_intensity_g_per_kwh']:g} g/kWh"
    cost = f" | cost {state['cost']:.4g} ({state['price_per_gpu_hour']:g}/device-hour)" if "cost" in state else ""
    return (f"energy {float(state.get('energy_kwh') or 0.0):.4g} kWh | {co2_g:.4g} g CO2e ({where}, PUE "
            f"{state.get('pue', 1.0):g}){cost} | {state.get('hardware') or 'hardware unknown'} | "
            f"{state.get('method') or 'not measured'}")


def card_co2(state: dict[str, Any] | None, training_type: str = "pre-training") -> dict[str, Any] | None:
    """The Hugging Face model-card metadata ``co2_eq_emissions`` for a run's
    :meth:`EnergyMeter.state` (``emissions`` in grams, as the Hub's card spec asks), or None when the
    run measured nothing."""
    if not state or not state.get("method") or state.get("method") == "not measured":
        return None
    out: dict[str, Any] = {"emissions": round(1000.0 * float(state.get("co2_kg") or 0.0), 6),
                           "source": state["method"], "training_type": training_type}
    if state.get("hardware"):
        out["hardware_used"] = state["hardware"]
    if state.get("country_iso_code"):
        out["geographical_location"] = state["country_iso_code"] + (f"/{state['region']}" if state.get("region") else "")
    return out
