"""SCAFFOLD (Karimireddy et al. 2020, "Stochastic Controlled Averaging", option II).

Server state: the global params x and the server control variate c (ServerState.extra
["control"], one array per shared param, zeros at version 0). Each client i keeps its own
control variate c_i on the device (edge_runtime/store.py, zeros until it first trains).

Who computes what:

* coordinator -> device: the task carries x and c (TrainTask.correction = c, dense fp32). The
  device knows c_i, so it forms the correction c - c_i itself and adds it to every shared
  param's gradient in each of its K local steps. Sending c (the same bytes to every device)
  instead of a per-device c - c_i keeps the server free of per-client state.
* device: option II, c_i+ = c_i - c + (x - y_i) / (K * lr), and it uploads Δc_i = c_i+ - c_i
  in Update.control next to Δy_i = y_i - x (see edge_runtime/local_training.py for SGD with
  momentum, and for why AdamW is refused).
* coordinator (`apply`, here):
      x <- x + server_lr * mean(Δy_i)          unweighted, as in the paper, whatever the
                                                config's `weighting` (coordinator/weights.py)
      c <- c + (|S| / N) * mean(Δc_i)          unweighted, = c + (1/N) sum_{i in S} Δc_i
  with S the accepted updates and N the number of devices the coordinator knows (its
  registry, restored from the store after a restart). Devices that never trained hold
  c_i = 0, so this keeps c = (1/N) sum_i c_i, the invariant that makes the corrections
  c - c_i average out over the population, and so in the plain mean of the deltas: weighted
  by examples, they did not, and the large devices' corrections drove the global model off
  (weights.py has the numbers). N counts ineligible and offline devices too: they hold a c_i
  all the same.
"""

from __future__ import annotations

from .base import AggregateInput, Params, RoundPlan, ServerState, Strategy, add_scaled, zeros_like

CONTROL = "control"  # ServerState.extra key of c


class Scaffold(Strategy):
    name = "scaffold"
    uses_control = True

    def init_extra(self, params: Params) -> dict[str, Params]:
        return {CONTROL: zeros_like(params)}

    def configure(self, state: ServerState) -> RoundPlan:
        return RoundPlan(self.hyper, correction=state.extra[CONTROL])

    def apply(self, state: ServerState, agg: AggregateInput) -> ServerState:
        if agg.mean_control is None:
            raise ValueError("SCAFFOLD needs the mean control-variate delta of the round")
        # max(): a reporter is always in the registry, so N >= |S|; guard the ratio anyway.
        fraction = agg.participants / max(agg.population, agg.participants)
        control = add_scaled(state.extra[CONTROL], agg.mean_control, fraction)
        params = add_scaled(state.params, agg.mean_delta, self.server_lr)
        return ServerState(version=state.version + 1, params=params, extra={**state.extra, CONTROL: control})
