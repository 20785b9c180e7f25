"""Tests of histokg.losses against slow float64 reference implementations written with explicit loops."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from class_resolver.utils import get_subclasses

from histokg.errors import ConfigError
from histokg.losses import LOSSES, ContrastiveLoss, LossInputs, build_loss, loss_kwargs, loss_registry

K_PRIOR = 3  # KG-space size k of the Gaussians


# ------------------------------------------------------------------------------------ fixtures
def make_batch(
    n: int = 6, d: int = 5, k: int = K_PRIOR, seed: int = 0, dtype=torch.float64, symmetric: bool = True
) -> dict:
    """Random L2-normalised embeddings, a random (symmetric) prior in [0, 1] and KG Gaussians."""
    gen = torch.Generator().manual_seed(seed)
    f = F.normalize(torch.randn(n, d, generator=gen, dtype=torch.float64), dim=-1)
    g = F.normalize(torch.randn(n, d, generator=gen, dtype=torch.float64), dim=-1)
    a = torch.rand(n, n, generator=gen, dtype=torch.float64)
    W = (a + a.T) / 2 if symmetric else a
    mean = torch.randn(n, k, generator=gen, dtype=torch.float64)
    var = torch.rand(n, k, generator=gen, dtype=torch.float64) * 0.5 + 0.05
    scale = torch.tensor(1.0 + 4.0 * torch.rand((), generator=gen).item(), dtype=torch.float64)
    return {"f": f.to(dtype), "g": g.to(dtype), "scale": scale.to(dtype), "W": W, "mean": mean, "var": var}


def leaves(batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return tuple(batch[k].detach().clone().requires_grad_() for k in ("f", "g", "scale"))


def inputs_of(f, g, scale, batch: dict) -> LossInputs:
    return LossInputs(
        img=f, expr=g, logit_scale=scale, W=batch["W"], gauss_mean=batch["mean"], gauss_var=batch["var"]
    )


def make_loss(name: str, d: int, **kwargs) -> ContrastiveLoss:
    return build_loss(name, d, K_PRIOR if LOSSES[name].needs_gaussians else None, **kwargs)


def grads(value: torch.Tensor, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    out = torch.autograd.grad(value, tensors, allow_unused=True)
    return [torch.zeros_like(t) if gr is None else gr for t, gr in zip(tensors, out, strict=True)]


# ------------------------------------------------------------------- loop-based references
def ref_sim(f, g, scale):
    n = f.shape[0]
    return [[scale * torch.dot(f[i], g[j]) for j in range(n)] for i in range(n)]


def ref_log_softmax_row(row):
    m = max(float(v.detach()) for v in row)
    total = sum(torch.exp(v - m) for v in row)
    return [v - m - torch.log(total) for v in row]


def ref_soft_ce(logits, targets):
    """mean_i sum_j -T_ij log_softmax(logits_i)_j on nested lists."""
    n = len(logits)
    total = 0.0
    for i in range(n):
        logp = ref_log_softmax_row(logits[i])
        for j in range(n):
            total = total - targets[i][j] * logp[j]
    return total / n


def transpose(m):
    n = len(m)
    return [[m[j][i] for j in range(n)] for i in range(n)]


def identity(n):
    return [[1.0 if i == j else 0.0 for j in range(n)] for i in range(n)]


def ref_infonce(f, g, scale, **_):
    s = ref_sim(f, g, scale)
    n = len(s)
    total = 0.0
    for i in range(n):
        row = -s[i][i] + torch.log(sum(torch.exp(s[i][j]) for j in range(n)))
        col = -s[i][i] + torch.log(sum(torch.exp(s[j][i]) for j in range(n)))
        total = total + 0.5 * (row + col)
    return total / n


def ref_dcl(f, g, scale, **_):
    s = ref_sim(f, g, scale)
    n = len(s)
    if n < 2:
        return ref_infonce(f, g, scale)
    total = 0.0
    for i in range(n):
        row = -s[i][i] + torch.log(sum(torch.exp(s[i][j]) for j in range(n) if j != i))
        col = -s[i][i] + torch.log(sum(torch.exp(s[j][i]) for j in range(n) if j != i))
        total = total + 0.5 * (row + col)
    return total / n


def ref_bleep(f, g, scale, tau_prime=0.05, **_):
    s = ref_sim(f, g, scale)
    n = len(s)
    T = []
    for i in range(n):
        e = [
            math.exp(
                ((float(f[i].detach() @ f[j].detach()) + float(g[i].detach() @ g[j].detach())) / 2)
                / tau_prime
            )
            for j in range(n)
        ]
        T.append([v / sum(e) for v in e])
    return 0.5 * (ref_soft_ce(s, T) + ref_soft_ce(transpose(s), transpose(T)))


def ref_kg_targets(W, lam, tau_kg):
    n = len(W)
    T = []
    for i in range(n):
        z = sum(math.exp(W[i][k] / tau_kg) for k in range(n) if k != i)
        T.append([(1 - lam) if i == j else lam * math.exp(W[i][j] / tau_kg) / z for j in range(n)])
    return T


def ref_kg_soft(f, g, scale, W, lam=0.3, tau_kg=0.1, **_):
    s = ref_sim(f, g, scale)
    Wl = W.tolist()
    T, T_t = ref_kg_targets(Wl, lam, tau_kg), ref_kg_targets(transpose(Wl), lam, tau_kg)
    return 0.5 * (ref_soft_ce(s, T) + ref_soft_ce(transpose(s), T_t))


def ref_kg_negatives_direction(s, W, beta):
    n = len(s)
    total = 0.0
    for i in range(n):
        w = {j: max(1.0 - beta * W[i][j], 1e-4) for j in range(n) if j != i}
        m = sum(w.values()) / (n - 1)
        denom = torch.exp(s[i][i]) + sum((w[j] / m) * torch.exp(s[i][j]) for j in w)
        total = total - s[i][i] + torch.log(denom)
    return total / n


def ref_kg_negatives(f, g, scale, W, beta=0.5, **_):
    s = ref_sim(f, g, scale)
    Wl = W.tolist()
    return 0.5 * (
        ref_kg_negatives_direction(s, Wl, beta)
        + ref_kg_negatives_direction(transpose(s), transpose(Wl), beta)
    )


def ref_alignment(f, g):
    n, d = f.shape
    return sum(sum((f[i, k] - g[i, k]) ** 2 for k in range(d)) for i in range(n)) / n


def ref_log_mean_gaussian_potential(mu, t):
    n, d = mu.shape
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    total = sum(torch.exp(-t * sum((mu[i, k] - mu[j, k]) ** 2 for k in range(d))) for i, j in pairs)
    return torch.log(total / len(pairs))


def ref_plain_decoupled_uniformity(f, g, t=2.0, uniformity_weight=1.0, **_):
    """Alignment + decoupled uniformity on the raw centroids (alpha = I), no prior at all."""
    mu = (f + g) / 2
    return ref_alignment(f, g) + uniformity_weight * ref_log_mean_gaussian_potential(mu, t)


def ref_kg_uniformity(f, g, scale, W, lam=0.3, t=2.0, eps=1.0, uniformity_weight=1.0, **_):
    n, d = f.shape
    Ws = ((W + W.T) / 2).tolist()
    K = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        z = sum(Ws[i][k] for k in range(n) if k != i)
        for j in range(n):
            K[i, j] = (1 - lam) if i == j else (lam * Ws[i][j] / z if z > 0 else 0.0)
    # (K + eps I)^-1 K = I - eps (K + eps I)^-1: a different route from the implementation's solve
    raw = torch.eye(n, dtype=torch.float64) - eps * torch.linalg.inv(
        K + eps * torch.eye(n, dtype=torch.float64)
    )
    alpha = [[float(raw[i, j]) / float(raw[i].sum()) for j in range(n)] for i in range(n)]
    mu = (f + g) / 2
    smoothed = torch.stack([sum(alpha[i][j] * mu[j] for j in range(n)) for i in range(n)])
    return ref_alignment(f, g) + uniformity_weight * ref_log_mean_gaussian_potential(smoothed, t)


def ref_kg_gaussian(f, g, scale, mean, var, params, gamma=0.1, min_var=1e-2, **_):
    P, r = params["proj.weight"], params["r"]
    n, d = f.shape
    k = mean.shape[1]
    nll = 0.0
    for i in range(n):
        pm = [sum(P[a, b] * mean[i, b] for b in range(k)) for a in range(d)]
        norm = torch.sqrt(sum(v**2 for v in pm))
        for a in range(d):
            sigma2 = sum(P[a, b] ** 2 * var[i, b] for b in range(k)) + min_var
            nll = nll + 0.5 * ((f[i, a] + r[a] - pm[a] / norm) ** 2 / sigma2 + torch.log(sigma2))
    return ref_infonce(f, g, scale) + gamma * nll / n / d


def ref_siglip(f, g, scale, params, **_):
    s = ref_sim(f, g, scale)
    n = len(s)
    b = params["bias"]
    total = 0.0
    for i in range(n):
        for j in range(n):
            y = 1.0 if i == j else -1.0
            total = total - torch.log(1.0 / (1.0 + torch.exp(-y * (s[i][j] + b))))
    return total / n


# ------------------------------------------------- (1) generic cases: one per registered loss
class LossTestCase:
    """The checks every loss must pass; one subclass per registered loss (pykeen's tests/cases.py pattern).

    A subclass sets ``name``, ``reference`` (a float64 loop implementation: ``reference(f, g, scale,
    W=..., mean=..., var=..., params=..., **kwargs)``, ``params`` the loss's own parameters by name),
    ``kwarg_cases`` (kwargs to check against the reference) and ``swap_symmetric`` (swapping the
    modalities, with W transposed, leaves the loss unchanged). ``prepare`` may give the loss's
    parameters non-trivial values.
    """

    name: str
    reference = None
    kwarg_cases: tuple[dict, ...] = ({},)
    swap_symmetric = True

    def prepare(self, loss: ContrastiveLoss, d: int) -> None:
        pass

    def build(self, d: int, **kwargs) -> ContrastiveLoss:
        loss = make_loss(self.name, d, **kwargs)
        self.prepare(loss, d)
        return loss

    def value(self, loss: ContrastiveLoss, f, g, scale, batch: dict) -> torch.Tensor:
        return loss(inputs_of(f, g, scale, batch))["loss"]

    def run_both(self, kwargs: dict, batch: dict):
        """(impl terms, impl grads, ref value, ref grads); grads over f, g, logit_scale and the loss's parameters."""
        loss = self.build(batch["f"].shape[1], **kwargs)
        f, g, scale = leaves(batch)
        terms = loss(inputs_of(f, g, scale, batch))
        named = dict(loss.named_parameters())
        impl_grads = grads(terms["loss"], [f, g, scale, *named.values()])
        rf, rg, rs = (t.detach().double().requires_grad_() for t in (batch["f"], batch["g"], batch["scale"]))
        params = {n: p.detach().double().requires_grad_() for n, p in named.items()}
        ref = type(self).reference(
            rf, rg, rs, W=batch["W"], mean=batch["mean"], var=batch["var"], params=params, **kwargs
        )
        return terms, impl_grads, ref, grads(ref, [rf, rg, rs, *params.values()])

    # ------------------------------------------------------------------ the shared checks
    def test_is_registered(self):
        cls = LOSSES[self.name]
        assert cls.name == self.name and issubclass(cls, ContrastiveLoss)
        for spelling in (self.name, self.name.upper().replace("_", "-"), *cls.synonyms):
            assert loss_registry.lookup(spelling) is cls and loss_registry.canonical(spelling) == self.name

    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
    def test_matches_loop_reference(self, dtype):
        tol = {} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-5}
        for kwargs in self.kwarg_cases:
            for seed, (n, d) in enumerate([(5, 4), (7, 8), (6, 5)]):
                batch = make_batch(n, d, seed=seed, dtype=dtype)
                terms, impl_grads, ref, ref_grads = self.run_both(kwargs, batch)
                value = terms["loss"]
                assert value.dtype == dtype and value.ndim == 0
                torch.testing.assert_close(value, ref.to(dtype), **tol)
                for got, want in zip(impl_grads, ref_grads, strict=True):
                    torch.testing.assert_close(got, want.to(got.dtype), **tol)

    def test_returns_named_finite_terms_with_loss(self):
        batch = make_batch(5, 4, seed=6, dtype=torch.float32)
        terms = self.build(4)(inputs_of(*leaves(batch), batch))
        assert "loss" in terms and len(terms) >= 2, terms.keys()  # the total and at least one part
        assert all(v.ndim == 0 and torch.isfinite(v) for v in terms.values())

    def test_gradients_reach_both_towers(self):
        batch = make_batch(6, 5, seed=12, dtype=torch.float32)
        f, g, scale = leaves(batch)
        self.value(self.build(5), f, g, scale, batch).backward()
        for t in (f, g):
            assert torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0

    def test_invariant_to_the_order_of_the_batch(self):
        batch = make_batch(6, 5, seed=13)
        p = torch.tensor([3, 0, 5, 1, 4, 2])
        shuffled = dict(batch, f=batch["f"][p], g=batch["g"][p], W=batch["W"][p][:, p],
                        mean=batch["mean"][p], var=batch["var"][p])  # fmt: skip
        loss = self.build(5)
        torch.testing.assert_close(
            self.value(loss, batch["f"], batch["g"], batch["scale"], batch),
            self.value(loss, shuffled["f"], shuffled["g"], shuffled["scale"], shuffled),
        )

    def test_symmetric_in_the_two_modalities(self):
        if not self.swap_symmetric:
            pytest.skip(f"{self.name} treats the image and expression towers differently")
        batch = make_batch(6, 5, seed=14, symmetric=False)
        swapped = dict(batch, f=batch["g"], g=batch["f"], W=batch["W"].T)
        loss = self.build(5)
        torch.testing.assert_close(
            self.value(loss, batch["f"], batch["g"], batch["scale"], batch),
            self.value(loss, swapped["f"], swapped["g"], swapped["scale"], swapped),
        )

    def test_refuses_an_unknown_kwarg_naming_the_valid_ones(self):
        valid = loss_kwargs(self.name)
        with pytest.raises(ConfigError) as err:
            make_loss(self.name, 4, not_a_kwarg=1)
        message = str(err.value)
        assert f"loss {self.name!r}: unknown kwarg 'not_a_kwarg'" in message
        assert f"(valid kwargs: {', '.join(valid) or 'none'})" in message

    def test_defaults_spelled_out_give_the_same_loss(self):
        batch = make_batch(5, 4, seed=15)
        plain, explicit = self.build(4), self.build(4, **loss_kwargs(self.name))
        f, g, scale = batch["f"], batch["g"], batch["scale"]
        assert torch.equal(self.value(plain, f, g, scale, batch), self.value(explicit, f, g, scale, batch))

    @pytest.mark.parametrize("n", [1, 2])
    def test_tiny_batches_are_finite(self, n):
        batch = make_batch(n, 4, seed=2, dtype=torch.float32)
        f, g, scale = leaves(batch)
        value = self.value(make_loss(self.name, 4), f, g, scale, batch)
        value.backward()
        assert torch.isfinite(value) and all(torch.isfinite(t.grad).all() for t in (f, g))

    def test_prior_is_not_differentiated_and_terms_are_logged(self):
        batch = make_batch(5, 4, seed=6, dtype=torch.float32)
        batch["W"] = batch["W"].float().requires_grad_()
        f, g, scale = leaves(batch)
        terms = make_loss(self.name, 4)(inputs_of(f, g, scale, batch))
        terms["loss"].backward()
        assert batch["W"].grad is None
        parts = {k: float(v.detach()) for k, v in terms.items() if k != "loss"}
        assert parts and all(math.isfinite(v) for v in parts.values())

    def test_bf16_autocast_returns_finite_float32(self):
        batch = make_batch(6, 8, seed=8, dtype=torch.float32)
        loss = make_loss(self.name, 8)
        f = batch["f"].bfloat16().requires_grad_()
        g = batch["g"].bfloat16().requires_grad_()
        scale = batch["scale"].clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            value = self.value(loss, f, g, scale, batch)
        assert value.dtype == torch.float32 and torch.isfinite(value)
        value.backward()
        assert torch.isfinite(f.grad.float()).all() and torch.isfinite(g.grad.float()).all()
        plain = self.value(loss, f.detach().float(), g.detach().float(), scale.detach(), batch)
        torch.testing.assert_close(value.detach(), plain)

    def test_adam_steps_reduce_loss(self):
        torch.manual_seed(0)
        batch = make_batch(8, 8, seed=9, dtype=torch.float32)
        raw_f = torch.randn(8, 8, requires_grad=True)
        raw_g = torch.randn(8, 8, requires_grad=True)
        scale = torch.tensor(5.0)
        loss = make_loss(self.name, 8)
        opt = torch.optim.Adam([raw_f, raw_g, *loss.parameters()], lr=0.05)

        def step() -> float:
            opt.zero_grad()
            value = self.value(loss, F.normalize(raw_f, dim=-1), F.normalize(raw_g, dim=-1), scale, batch)
            value.backward()
            opt.step()
            return float(value.detach())

        first = step()
        for _ in range(25):
            last = step()
        assert last < first - 0.05


class TestInfoNCE(LossTestCase):
    name = "infonce"
    reference = staticmethod(ref_infonce)


class TestBleep(LossTestCase):
    name = "bleep"
    reference = staticmethod(ref_bleep)
    kwarg_cases = ({}, {"tau_prime": 0.3})
    swap_symmetric = False  # the targets are row-normalised: swapping does not transpose them


class TestKGSoft(LossTestCase):
    name = "kg_soft"
    reference = staticmethod(ref_kg_soft)
    kwarg_cases = ({}, {"lam": 0.8, "tau_kg": 0.5})


class TestKGNegatives(LossTestCase):
    name = "kg_negatives"
    reference = staticmethod(ref_kg_negatives)
    kwarg_cases = ({}, {"beta": 1.0}, {"beta": 3.0})


class TestKGUniformity(LossTestCase):
    name = "kg_uniformity"
    reference = staticmethod(ref_kg_uniformity)
    kwarg_cases = ({}, {"lam": 0.5, "t": 1.0, "eps": 0.05, "uniformity_weight": 0.5})


class TestKGGaussian(LossTestCase):
    name = "kg_gaussian"
    reference = staticmethod(ref_kg_gaussian)
    kwarg_cases = ({}, {"gamma": 1.0, "min_var": 0.1})
    swap_symmetric = False  # the Gaussians regularise the image embeddings only

    def prepare(self, loss, d):  # a non-trivial projection and translation
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            loss.proj.weight.copy_(torch.randn(d, K_PRIOR, generator=gen))
            loss.r.copy_(0.3 * torch.randn(d, generator=gen))


class TestSigLIP(LossTestCase):
    name = "siglip"
    reference = staticmethod(ref_siglip)
    kwarg_cases = ({}, {"bias_init": -2.0})

    def prepare(self, loss, d):  # a bias away from its initial value
        with torch.no_grad():
            loss.bias.add_(0.7)


class TestDCL(LossTestCase):
    name = "dcl"
    reference = staticmethod(ref_dcl)


CASES = {case.name: case for case in get_subclasses(LossTestCase)}


def test_every_registered_loss_has_a_test_case():
    """The meta-test: a loss added to histokg.losses without its LossTestCase fails here."""
    registered = {cls.name for cls in loss_registry}
    assert registered == set(LOSSES) == set(loss_registry.names)
    assert registered - set(CASES) == set(), f"losses without a test case: {registered - set(CASES)}"
    assert set(CASES) - registered == set(), f"test cases of unregistered losses: {set(CASES) - registered}"


def test_flags_are_right():
    assert {n for n, c in LOSSES.items() if c.needs_prior} == {"kg_soft", "kg_negatives", "kg_uniformity"}
    assert {n for n, c in LOSSES.items() if c.needs_gaussians} == {"kg_gaussian"}


@pytest.mark.parametrize("name", [n for n, c in LOSSES.items() if c.needs_prior])
def test_asymmetric_prior_uses_its_transpose_for_the_other_direction(name):
    batch = make_batch(6, 5, seed=11, symmetric=False)
    terms, impl_grads, ref, ref_grads = CASES[name]().run_both({}, batch)
    torch.testing.assert_close(terms["loss"], ref)
    for got, want in zip(impl_grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want)


# ------------------------------------------------------------ (2) prior off == plain counterpart
def compare_losses(loss_a, loss_b, batch, exact: bool = False):
    fa, ga, sa = leaves(batch)
    fb, gb, sb = leaves(batch)
    va = loss_a(inputs_of(fa, ga, sa, batch))["loss"]
    vb = loss_b(inputs_of(fb, gb, sb, batch))["loss"]
    pairs = [(va, vb), *zip(grads(va, [fa, ga, sa]), grads(vb, [fb, gb, sb]), strict=True)]
    for a, b in pairs:
        if exact:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    ("name", "off", "exact"),
    [
        ("kg_soft", {"lam": 0.0}, False),
        ("kg_negatives", {"beta": 0.0}, True),
        ("kg_gaussian", {"gamma": 0.0}, True),
    ],
)
def test_prior_off_is_infonce(name, off, exact, dtype):
    for seed in range(3):
        batch = make_batch(6, 5, seed=seed, dtype=dtype)
        compare_losses(make_loss(name, 5, **off), build_loss("infonce", 5), batch, exact=exact)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_kg_uniformity_lam0_is_plain_decoupled_uniformity(dtype):
    tol = {} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-5}
    for seed in range(3):
        batch = make_batch(6, 5, seed=seed, dtype=dtype)
        f, g, scale = leaves(batch)
        value = build_loss("kg_uniformity", 5, lam=0.0, t=1.5)(inputs_of(f, g, scale, batch))["loss"]
        rf, rg = (t.detach().double().requires_grad_() for t in (batch["f"], batch["g"]))
        ref = ref_plain_decoupled_uniformity(rf, rg, t=1.5)
        torch.testing.assert_close(value, ref.to(dtype), **tol)
        for got, want in zip(grads(value, [f, g]), grads(ref, [rf, rg]), strict=True):
            torch.testing.assert_close(got, want.to(dtype), **tol)
    assert torch.equal(
        build_loss("kg_uniformity", 5, lam=0.0).smoothing(batch["W"]), torch.eye(6, dtype=torch.float64)
    )


# --------------------------------------------------------------------------------- (3) sanity
def test_aligned_batch_beats_shuffled():
    f = torch.eye(6, 8)
    perm = torch.tensor([1, 2, 3, 4, 5, 0])
    loss = build_loss("infonce", 8)
    scale = torch.tensor(10.0)
    aligned = loss(LossInputs(img=f, expr=f.clone(), logit_scale=scale))["loss"]
    shuffled = loss(LossInputs(img=f, expr=f[perm], logit_scale=scale))["loss"]
    assert aligned < 0.01 < 5.0 < shuffled


@pytest.mark.parametrize("fill", ["zeros", "identity", "ones", "half"])
def test_kg_negatives_constant_offdiagonal_prior_is_infonce(fill):
    batch = make_batch(6, 5, seed=3)
    W = {
        "zeros": torch.zeros(6, 6),
        "identity": torch.eye(6),
        "ones": torch.ones(6, 6),
        "half": torch.full((6, 6), 0.5),
    }[fill]
    batch["W"] = W.double()
    compare_losses(build_loss("kg_negatives", 5, beta=0.7), build_loss("infonce", 5), batch)


@pytest.mark.parametrize("fill", ["zeros", "identity"])
def test_kg_soft_uninformative_prior_is_label_smoothing(fill):
    batch = make_batch(6, 5, seed=4)
    batch["W"] = (
        torch.zeros(6, 6, dtype=torch.float64) if fill == "zeros" else torch.eye(6, dtype=torch.float64)
    )
    lam = 0.4
    value = build_loss("kg_soft", 5, lam=lam)(inputs_of(batch["f"], batch["g"], batch["scale"], batch))[
        "loss"
    ]
    s = batch["scale"] * batch["f"] @ batch["g"].T
    smooth = F.cross_entropy(
        s, torch.arange(6), label_smoothing=lam * 6 / 5
    )  # mass lam spread over the 5 others
    smooth_t = F.cross_entropy(s.T, torch.arange(6), label_smoothing=lam * 6 / 5)
    torch.testing.assert_close(value, 0.5 * (smooth + smooth_t))


@pytest.mark.parametrize("fill", ["zeros", "identity"])
def test_kg_uniformity_prior_without_neighbours_is_plain(fill):
    batch = make_batch(6, 5, seed=5)
    batch["W"] = (
        torch.zeros(6, 6, dtype=torch.float64) if fill == "zeros" else torch.eye(6, dtype=torch.float64)
    )
    value = build_loss("kg_uniformity", 5, lam=0.3)(inputs_of(batch["f"], batch["g"], batch["scale"], batch))[
        "loss"
    ]
    torch.testing.assert_close(value, ref_plain_decoupled_uniformity(batch["f"], batch["g"]))


def two_cluster_batch():
    """Spots 0-2 and 3-5 form two KG groups; embeddings of a group are close to each other."""
    gen = torch.Generator().manual_seed(7)
    centres = F.normalize(torch.randn(2, 8, generator=gen), dim=-1)
    base = centres.repeat_interleave(3, dim=0)
    f = F.normalize(base + 0.3 * torch.randn(6, 8, generator=gen), dim=-1)
    g = F.normalize(base + 0.3 * torch.randn(6, 8, generator=gen), dim=-1)
    group = torch.arange(6) // 3
    W = (group[:, None] == group[None, :]).float()
    return f, g, W


def test_kg_negatives_pushes_related_pairs_less():
    f, g, W = two_cluster_batch()
    scale = torch.tensor(10.0)
    plain = build_loss("infonce", 8)(LossInputs(img=f, expr=g, logit_scale=scale))["loss"]
    kg = build_loss("kg_negatives", 8, beta=0.9)(LossInputs(img=f, expr=g, logit_scale=scale, W=W))["loss"]
    assert kg < plain


def test_kg_soft_targets_put_mass_on_kg_neighbours():
    _, _, W = two_cluster_batch()
    T = build_loss("kg_soft", 8, lam=0.3).soft_targets(W)
    torch.testing.assert_close(T.sum(-1), torch.ones(6))
    torch.testing.assert_close(T.diagonal(), torch.full((6,), 0.7))
    assert T[0, 1] > 0.14 and T[0, 4] < 1e-3


def test_kg_uniformity_smoothing_is_row_stochastic_and_mixes_groups_only():
    _, _, W = two_cluster_batch()
    alpha = build_loss("kg_uniformity", 8, lam=0.3).smoothing(W)
    torch.testing.assert_close(alpha.sum(-1), torch.ones(6))
    assert alpha[0, 1] > 0.05
    torch.testing.assert_close(alpha[:3, 3:], torch.zeros(3, 3), atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------ (4) errors
@pytest.mark.parametrize("name", [n for n, c in LOSSES.items() if c.needs_prior])
def test_missing_prior_raises(name):
    batch = make_batch(5, 4)
    with pytest.raises(ValueError, match=r"\bW\b"):
        make_loss(name, 4)(LossInputs(img=batch["f"], expr=batch["g"], logit_scale=batch["scale"]))
    with pytest.raises(ValueError, match="W must be"):
        make_loss(name, 4)(
            LossInputs(img=batch["f"], expr=batch["g"], logit_scale=batch["scale"], W=torch.ones(4, 4))
        )


def test_missing_gaussians_raise():
    batch = make_batch(5, 4)
    loss = make_loss("kg_gaussian", 4)
    with pytest.raises(ValueError, match="gauss_mean"):
        loss(LossInputs(img=batch["f"], expr=batch["g"], logit_scale=batch["scale"], gauss_var=batch["var"]))
    with pytest.raises(ValueError, match="gauss_var"):
        loss(
            LossInputs(img=batch["f"], expr=batch["g"], logit_scale=batch["scale"], gauss_mean=batch["mean"])
        )
    with pytest.raises(ValueError, match="prior_dim"):
        build_loss("kg_gaussian", 4)
    wrong = LossInputs(
        torch.ones(5, 3), torch.ones(5, 3), batch["scale"], gauss_mean=batch["mean"], gauss_var=batch["var"]
    )
    with pytest.raises(ValueError, match="embed_dim=4"):
        loss(wrong)


def test_unknown_name_suggests_nearest():
    with pytest.raises(ValueError, match="kg_sfot") as err:
        build_loss("kg_sfot", 8)
    assert "did you mean 'kg_soft'" in str(err.value)
    assert all(name in str(err.value) for name in LOSSES)


def test_unknown_or_bad_kwarg_raises():
    with pytest.raises(ValueError, match="'lamb'.*did you mean 'lam'"):
        build_loss("kg_soft", 8, lamb=0.3)
    with pytest.raises(ValueError, match="'beta'"):
        build_loss("infonce", 8, beta=0.3)
    with pytest.raises(ValueError, match="lam"):
        build_loss("kg_soft", 8, lam=1.5)
    with pytest.raises(ValueError, match="lam"):
        build_loss("kg_uniformity", 8, lam=0.9)
    with pytest.raises(ValueError, match="tau_kg"):
        build_loss("kg_soft", 8, tau_kg=0.0)
    with pytest.raises(ValueError, match="beta"):
        build_loss("kg_negatives", 8, beta="strong")
    with pytest.raises(ValueError, match="embed_dim"):
        build_loss("infonce", 0)
    assert build_loss("kg_gaussian", 8, 3, min_var="1e-2").min_var == 0.01  # YAML 1.1 reads 1e-2 as a string


def test_mismatched_embeddings_raise():
    with pytest.raises(ValueError, match="img and expr"):
        build_loss("infonce", 4)(
            LossInputs(img=torch.ones(3, 4), expr=torch.ones(2, 4), logit_scale=torch.tensor(1.0))
        )


def test_kg_gaussian_init_is_deterministic_and_configurable():
    a, b = make_loss("kg_gaussian", 8), make_loss("kg_gaussian", 8)
    assert torch.equal(a.proj.weight, b.proj.weight) and torch.equal(a.r, torch.zeros(8))
    assert not torch.equal(a.proj.weight, make_loss("kg_gaussian", 8, seed=1).proj.weight)
    assert "gamma=0.1" in repr(a)
