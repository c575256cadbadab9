"""Cocktail Party Attack (Kariyappa et al., ICML 2023): unmix an aggregated FC-layer gradient.

The weight gradient of a fully connected layer on the flattened input, summed over a batch
(or over many clients' batches under secure aggregation), is dW = sum_i (dL/dz_i) x_i^T = A X:
each row is a linear mixture of the B private inputs. Independent component analysis finds
an unmixing matrix U with U dW = D P X (scale D, permutation P). As in the paper, the
mixtures are centred and whitened (PCA to B components), and U is optimized with Adam on
  -non-Gaussianity (negentropy approximation with log cosh)
  + decor * mean(exp(T |cos(u_i, u_j)|) - 1)    (mutual independence of the unmixing rows)
  + tv * total variation of the recovered images  (image prior)
or, with `cpa.method=fastica`, by the symmetric FastICA fixed-point iteration (Hyvarinen,
IEEE TNN 1999). Mixing is linear over pixels, so a linear filter applied to every mixture
commutes with it: with `cpa.domain=gradients` (default) the unmixing is learnt on the
mixtures' horizontal and vertical pixel differences, where natural images are sparse
(strongly non-Gaussian) and far less correlated with each other than their raw pixels, and
then applied to the raw mixtures. `cpa.domain=pixels` is the paper's setting.

Sign and scale, which ICA leaves open:
- `bias`: exact when the separation is: the layer's bias gradient is db = A 1, and with the
  recovered S = M X, (dW S^+)(M 1) = db is a least-squares problem for each component's
  signed scale (M 1)_j; x_j = S_j / (M 1)_j. Imperfect separation leaks into (M 1) though.
- `prior`: each component stretched to [0, 1] in pixel space; the sign whose mean
  brightness is closer to the data's (public) pixel mean.
- `consistency` (default): signs start from the bias read-off and are flipped one at a time
  while that makes the next fully connected layer's gradient better explained: its weight
  gradient is a mixture of the first layer's activations act(W1 x_i + b1) of the same
  samples, so candidate images whose activations span it are the consistent ones; images
  are stretched to [0, 1] as with `prior`. Falls back to `bias` signs without such a layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fedattack.attacks.analytic import check_layer_name, input_layer, layer_check, layer_gradient
from fedattack.attacks.engine import linear_layers
from fedattack.attacks.base import AttackContext, register_attack
from fedattack.attacks.engine import functional_model, num_images, total_variation
from fedattack.errors import AttackFailure
from fedattack.validate import check_choice, check_range
from fedattack.threat import DataSpec, Observation, Reconstruction

EPS = 1e-12
GAUSS_LOGCOSH = 0.374567  # E[log cosh(z)] for z ~ N(0, 1)


@dataclass
class CPAParams:
    method: str = "optimize"  # optimize (the paper's objective with Adam) | fastica (fixed-point iteration)
    domain: str = "gradients"  # gradients: learn the unmixing on pixel differences | pixels (the paper's)
    iterations: int = 25000  # Adam steps (optimize)
    lr: float = 1e-3
    ne: float = 1.0  # weight of the non-Gaussianity (negentropy) term
    decor: float = 1.47  # weight of the mutual-independence term
    T: float = 12.4  # its temperature
    tv: float = 3.1  # weight of the total-variation prior
    max_fixed_point: int = 1000  # fastica: at most this many fixed-point steps
    tol: float = 1e-5  # fastica: stop when the unmixing rows move less than this
    scale: str = "consistency"  # consistency | bias | prior: how sign and scale are resolved (module doc)
    layer: str = "auto"  # auto: first fully connected layer on the flattened input; or a layer name
    rank_tol: float = 1e-6  # singular values below this fraction of the largest do not count as sources

    def validate(self, name: str) -> None:
        check_choice(name, "method", self.method, ["optimize", "fastica"])
        check_choice(name, "domain", self.domain, ["gradients", "pixels"])
        check_choice(name, "scale", self.scale, ["consistency", "bias", "prior"])
        check_range(name, "iterations", self.iterations, 1)
        check_range(name, "max_fixed_point", self.max_fixed_point, 1)
        check_range(name, "lr", self.lr, 0, lo_open=True)
        for key in ("ne", "decor", "T", "tv"):
            check_range(name, key, getattr(self, key), 0)
        check_range(name, "rank_tol", self.rank_tol, 0, 1)
        check_range(name, "tol", self.tol, 0, lo_open=True)
        check_layer_name(name, "layer", self.layer)


# -- separation ---------------------------------------------------------------------------

def pixel_differences(x: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Rows of x as images -> their horizontal and vertical neighbour differences, flattened."""
    img = x.view(x.shape[0], *shape)
    dx = (img[..., :, 1:] - img[..., :, :-1]).flatten(1)
    dy = (img[..., 1:, :] - img[..., :-1, :]).flatten(1)
    return torch.cat([dx, dy], dim=1)


def whiten(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre each mixture over its entries and whiten to k components: (Z, Wh), Z = Wh (x - mean)."""
    xc = x - x.mean(dim=1, keepdim=True)
    vals, vecs = torch.linalg.eigh(xc @ xc.T / (x.shape[1] - 1))
    top = torch.argsort(vals, descending=True)[:k]
    wh = vecs[:, top].T / torch.sqrt(vals[top].clamp_min(EPS))[:, None]
    return wh @ xc, wh


def num_sources(dw: torch.Tensor, n: int, rank_tol: float) -> int:
    """min(n, numerical rank of dW), from the eigenvalues of the small Gram matrix."""
    gram = dw @ dw.T if dw.shape[0] <= dw.shape[1] else dw.T @ dw
    s = torch.linalg.eigvalsh(gram).clamp_min(0).sqrt()
    return max(1, min(n, int((s > rank_tol * s.max()).sum())))


def unmix_optimize(z: torch.Tensor, raw: torch.Tensor, shape: tuple[int, ...], params: CPAParams) -> torch.Tensor:
    """The paper's objective over unit-norm unmixing rows u; raw = Wh dW gives whole images for TV."""
    k = z.shape[0]
    u = torch.eye(k, dtype=z.dtype, device=z.device, requires_grad=True)
    opt = torch.optim.Adam([u], lr=params.lr)
    for _ in range(params.iterations):
        opt.zero_grad()
        un = u / (u.norm(dim=1, keepdim=True) + EPS)
        loss = torch.zeros((), dtype=z.dtype, device=z.device)
        if params.ne > 0:
            s = un @ z
            logcosh = s.abs() + torch.log1p(torch.exp(-2 * s.abs())) - math.log(2)  # stable log cosh
            loss = loss - params.ne * ((logcosh.mean(dim=1) - GAUSS_LOGCOSH) ** 2).mean()
        if params.decor > 0:
            cos = (un @ un.T).abs()
            loss = loss + params.decor * (torch.exp(params.T * cos) - 1).mean()
        if params.tv > 0:
            loss = loss + params.tv * total_variation((un @ raw).view(k, *shape))
        loss.backward()
        opt.step()
    return (u / (u.norm(dim=1, keepdim=True) + EPS)).detach()


def _sym_decorrelate(w: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh(w @ w.T)
    return vecs @ torch.diag(1 / torch.sqrt(vals.clamp_min(EPS))) @ vecs.T @ w


def unmix_fastica(z: torch.Tensor, params: CPAParams, gen: torch.Generator) -> tuple[torch.Tensor, int]:
    """Symmetric FastICA with the log cosh contrast (tanh nonlinearity)."""
    k, n = z.shape
    w = _sym_decorrelate(torch.randn(k, k, generator=gen, dtype=torch.float64).to(z))
    it = 0
    for it in range(1, params.max_fixed_point + 1):
        g = torch.tanh(w @ z)
        w_new = _sym_decorrelate(g @ z.T / n - (1 - g**2).mean(dim=1, keepdim=True) * w)
        moved = (torch.abs(torch.diag(w_new @ w.T)) - 1).abs().max()
        w = w_new
        if moved < params.tol:
            break
    return w, it


# -- sign and scale -----------------------------------------------------------------------

def bias_scale(s: torch.Tensor, dw: torch.Tensor, db: torch.Tensor) -> torch.Tensor:
    """Per-component signed scale m with x_j = s_j / m_j, from (dW S^+) m = db (least squares)."""
    k_mat = torch.linalg.lstsq(s.T, dw.T).solution.T  # dW S^+, (rows, k)
    return torch.linalg.lstsq(k_mat, db[:, None]).solution.flatten()


def stretch(s: torch.Tensor, sign: torch.Tensor, spec: DataSpec) -> torch.Tensor:
    """sign_j * s_j stretched to [0, 1] pixels, returned in model-input space (flattened)."""
    v = s * sign[:, None]
    lo, hi = v.min(dim=1, keepdim=True).values, v.max(dim=1, keepdim=True).values
    u = (v - lo) / (hi - lo + EPS)
    return spec.normalize(u.view(-1, *spec.shape)).flatten(1)


def brightness_sign(s: torch.Tensor, spec: DataSpec) -> torch.Tensor:
    """+1 or -1 per component: the stretched image whose mean is closer to the data's pixel mean."""
    lo, hi = s.min(dim=1, keepdim=True).values, s.max(dim=1, keepdim=True).values
    mean = ((s - lo) / (hi - lo + EPS)).mean(dim=1)
    target = sum(spec.mean) / len(spec.mean)
    return torch.where((mean - target).abs() <= (1 - mean - target).abs(), 1.0, -1.0).to(s)


def next_layer(obs: Observation, layer: str) -> str | None:
    """The next fully connected layer whose input size is this layer's output size."""
    names = linear_layers(obs.global_params)
    width = obs.global_params[layer + ".weight"].shape[0]
    after = names[names.index(layer) + 1:] if layer in names else []
    return next((n for n in after if obs.global_params[n + ".weight"].shape[1] == width), None)


def consistency_signs(obs: Observation, layer2: str, s: torch.Tensor, start: torch.Tensor,
                      device: torch.device, sweeps: int = 4) -> torch.Tensor:
    """Greedy sign flips that lower the part of layer2's gradient the candidates' activations leave unexplained."""
    v = functional_model(obs, device)
    dw2, db2 = layer_gradient(obs, layer2)
    target = torch.cat([dw2, db2[:, None]], dim=1).to(device)
    seen: dict[str, torch.Tensor] = {}
    module = v.module.get_submodule(layer2)
    hook = module.register_forward_hook(lambda m, inp, out: seen.__setitem__("h", inp[0]))

    def residual(sign: torch.Tensor) -> float:
        x = stretch(s, sign, obs.data).view(-1, *obs.data.shape)
        with torch.no_grad():
            v.logits(v.params, x.float().to(device))
        h = seen["h"].double().flatten(1)
        ha = torch.cat([h, torch.ones(len(h), 1, dtype=h.dtype, device=h.device)], dim=1)
        gram = ha @ ha.T
        gram = gram + 1e-10 * gram.diagonal().mean() * torch.eye(len(ha), dtype=ha.dtype, device=ha.device)
        coef = torch.linalg.solve(gram, ha @ target.T)  # least squares target ~= coef^T ha
        return float(((target - coef.T @ ha) ** 2).sum() / (target**2).sum())

    try:
        sign, best = start.clone(), residual(start)
        for _ in range(sweeps):
            changed = False
            for j in range(len(sign)):
                trial = sign.clone()
                trial[j] = -trial[j]
                r = residual(trial)
                if r < best:
                    sign, best, changed = trial, r, True
            if not changed:
                break
    finally:
        hook.remove()
    return sign


# -- the attack ---------------------------------------------------------------------------

NEEDS = "a fully connected layer on the flattened input, as the built-in mlp has"


@register_attack("cpa", params=CPAParams,
                 paper="Kariyappa et al., Cocktail Party Attack: Breaking Aggregation-Based Privacy in Federated "
                       "Learning using Independent Component Analysis, ICML 2023",
                 scope="any", needs=NEEDS, check_model=layer_check("cpa", ("layer",), ("auto",)))
def cpa(obs: Observation, params: CPAParams, ctx: AttackContext) -> Reconstruction:
    layer = input_layer(obs) if params.layer == "auto" else params.layer
    if layer is None:
        raise AttackFailure(f"cpa needs {NEEDS}")
    dw, db = layer_gradient(obs, layer)
    shape = obs.data.shape
    if dw.shape[1] != math.prod(shape):
        raise AttackFailure(f"layer '{layer}' takes {dw.shape[1]} inputs, not an image of shape {shape}")
    k = num_sources(dw, min(num_images(obs), dw.shape[0]), params.rank_tol)
    mixtures = pixel_differences(dw, shape) if params.domain == "gradients" else dw
    z, wh = whiten(mixtures, k)
    info: dict = {"layer": layer, "components": k, "method": params.method, "domain": params.domain}
    if params.method == "fastica":
        u, info["iterations"] = unmix_fastica(z, params, ctx.generator())
    else:
        with torch.enable_grad():  # float32 is plenty for the unmixing and three times faster
            u = unmix_optimize(z.float(), (wh @ dw).float(), shape, params).double()
        info["iterations"] = params.iterations
    s = u @ wh @ dw  # the recovered components, whole images (means included)
    m = bias_scale(s, dw, db)
    if params.scale == "bias":
        x = s / torch.where(m.abs() > EPS, m, torch.full_like(m, EPS))[:, None]
    else:
        sign = brightness_sign(s, obs.data) if params.scale == "prior" else torch.where(m < 0, -1.0, 1.0).to(m)
        layer2 = next_layer(obs, layer) if params.scale == "consistency" else None
        if layer2 is not None:
            sign = consistency_signs(obs, layer2, s, sign, ctx.device)
        info["sign_from"] = layer2 or ("prior" if params.scale == "prior" else "bias")
        x = stretch(s, sign, obs.data)
    return Reconstruction(images=x.float().view(k, *shape), labels=None, info=info)
