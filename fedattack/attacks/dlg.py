"""DLG (Zhu et al., NeurIPS 2019) and iDLG (Zhao et al., 2020).

DLG optimizes dummy images and dummy soft labels with L-BFGS so that their gradient
matches the observed one in squared L2: the authors' code runs torch's L-BFGS at its
defaults (step 1, up to 20 evaluations per step, no line search) for 300 steps. Without a
line search L-BFGS can leave a near-perfect match and wander off once the loss is tiny, so
each run ends on the best iterate it saw: in DLG's setting on 32-px LFW faces, 7 of 10
faces are then recovered at >= 30 dB, against 1 of 10 when the run ends on its last iterate.
`line_search=strong_wolfe` (not the authors' choice) needs 1.9-2.7x fewer evaluations there.
Most random starts in that setting stall on a plateau from their first steps, where a start
that matches falls a hundredfold in ten: a stalled start hands its remaining steps to a fresh
one (`restart_stalled`, see optimize.run_lbfgs). On faces 0-7 of seed 0 (32 px, one image),
iDLG then recovers 8 of 8 at 60-76 dB in about 6 s each, against 1 of the first 6 with one
start; DLG 6 of 6 (faces 0-5).
iDLG first reads the labels off the last layer's gradient (`audit.labels`, see
fedattack.attacks.labels) and optimizes the images only.
Several local steps are modelled by simulating them on the dummy data (one step is the
papers' setting, plain gradient matching).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedattack.attacks.base import AttackContext, LogRange, register_attack
from fedattack.attacks.engine import DISTANCES, matching, num_images
from fedattack.attacks.optimize import AdamSchedule, best_restart, init_unknowns, run_adam, run_lbfgs
from fedattack.attacks.labels import recover_labels
from fedattack.validate import check_choice, check_range
from fedattack.errors import ConfigError
from fedattack.threat import Observation, Reconstruction


@dataclass
class DLGParams:
    iterations: int = 300
    optimizer: str = "lbfgs"  # lbfgs | adam
    loss: str = "l2"  # l2 | cosine
    lr: float = 1.0  # L-BFGS step size (Adam: use ~0.1)
    restarts: int = 1
    max_iter: int = 20  # L-BFGS evaluations per step (torch's default, as DLG's code runs it)
    tol: float = 0.0  # L-BFGS: stop once the gradient loss is <= tol (0: run every step)
    line_search: str = "none"  # L-BFGS: none (fixed steps of lr, as DLG's code) | strong_wolfe
    tolerance_grad: float = 1e-7  # L-BFGS: a step's inner evaluations end at this gradient (torch's default)
    tolerance_change: float = 1e-9  # ... or at this change of the loss (torch's default; 0: always max_iter)
    restart_stalled: bool = True  # L-BFGS: a start that stalls far from a match gives its remaining steps to a new one

    def validate(self, name: str) -> None:
        check_range(name, "iterations", self.iterations, 1)
        check_choice(name, "optimizer", self.optimizer, ["lbfgs", "adam"])
        check_choice(name, "loss", self.loss, sorted(DISTANCES))
        check_range(name, "lr", self.lr, 0, lo_open=True)
        check_range(name, "restarts", self.restarts, 1)
        check_range(name, "max_iter", self.max_iter, 1)
        check_range(name, "tol", self.tol, 0)
        check_range(name, "tolerance_grad", self.tolerance_grad, 0)
        check_range(name, "tolerance_change", self.tolerance_change, 0)
        check_choice(name, "line_search", self.line_search, ["none", "strong_wolfe"])
        if self.line_search != "none" and self.max_iter < 2:  # torch's L-BFGS stalls with one
            raise ConfigError(f"{name}.max_iter", f"must be >= 2 with {name}.line_search={self.line_search}, "
                                                  f"got {self.max_iter}")


def invert(obs: Observation, params: DLGParams, ctx: AttackContext, labels=None) -> Reconstruction:
    """DLG's optimization; with `labels`, they are fixed and only images are optimized."""
    problem = matching(obs, ctx.device, params.loss)
    gen = ctx.generator()
    u = init_unknowns(obs.data, num_images(obs), params.restarts, labels, gen, ctx.device)
    steps, starts = [params.iterations] * params.restarts, [1] * params.restarts
    if params.optimizer == "lbfgs":
        def fresh():  # a new start where one stalls (run_lbfgs), drawn by the same seeded generator
            return init_unknowns(obs.data, num_images(obs), 1, labels, gen, ctx.device)

        final, steps, starts = run_lbfgs(problem, u, params.iterations, params.lr, params.max_iter, params.tol,
                                         None if params.line_search == "none" else params.line_search,
                                         params.tolerance_grad, params.tolerance_change,
                                         fresh=fresh if params.restart_stalled else None)
    else:
        sched = AdamSchedule(params.iterations, params.lr, signed=False, boxed=False, decay=False)
        final = run_adam(problem, u, sched, obs.data.bounds(ctx.device))
    r = best_restart(final)
    return Reconstruction(images=u.x[r].detach(), labels=u.final_labels(r),
                          info={"loss": float(final[r]), "iterations": steps[r], "restarts": params.restarts,
                                "starts": starts[r]})


@register_attack("dlg", params=DLGParams, tunable={"lr": LogRange(0.1, 1.0)},
                 paper="Zhu et al., Deep Leakage from Gradients, NeurIPS 2019")
def dlg(obs: Observation, params: DLGParams, ctx: AttackContext) -> Reconstruction:
    return invert(obs, params, ctx)


@register_attack("idlg", params=DLGParams, tunable={"lr": LogRange(0.1, 1.0)},
                 paper="Zhao et al., iDLG: Improved Deep Leakage from Gradients, arXiv 2020 (labels, then DLG)")
def idlg(obs: Observation, params: DLGParams, ctx: AttackContext) -> Reconstruction:
    labels, method = recover_labels(obs, num_images(obs), ctx.labels)
    rec = invert(obs, params, ctx, labels=labels.to(ctx.device))
    rec.info["label_method"] = method
    return rec
