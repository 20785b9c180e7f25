"""Knowledge-graph priors: from a spot's expression to relation-typed pair weights W between spots.

The bridge between ``pathways_kg`` (a trained KG embedding bundle) and the trainer:

1. **Activations.** Each spot's genes are ranked (ties averaged, ranks divided by the number of
   genes, so in (0, 1]); a gene set's score is the mean rank of its genes present in the data (a
   singscore-style, rank-based score: insensitive to library size and to log-normalisation).
   Pathways are scored from ``member_of`` sets, cell types from ``marker_of`` sets. Scores then
   propagate up the hierarchical family (child -> parent, ``max`` or ``mean`` of the children and
   the parent's own score), phenotypes take the mean activation of their composition-family parts
   (``composed_of`` cell types, ``has_hallmark`` programs), and propagate up their own ``is_a``.
   All of it is matrix algebra over spots: no Python loop over spots or genes.
2. **Family representations.** For relation family r, the anchors E_r are the activated entities
   touched by an edge of that family. A spot's weights over E_r are
   ``w = softmax(z / temperature)`` with z its activations z-scored across E_r; its representation is
   ``z_r = normalize(sum_e w_e (phi_e - mean_{E_r} phi))`` with phi_e the entity's KG vector
   (TransE vector; [Re, Im] for RotatE/ComplEx; mean for KG2E).
3. **Similarities.** ``S^r_ij = exp((cos(z_r,i, z_r,j) - 1) / tau)``, a Gaussian kernel on the unit
   sphere: in (0, 1], 1 on the diagonal, positive semi-definite. ``W = sum_r alpha_r S^r`` is in
   [0, sum(alpha)]; with ``normalize_alpha`` (the default) the weights are divided by their sum and W is in [0, 1].

Options measured on real data (``histokg bench``, ``docs/benchmarks.md``): ``score="zmean"`` scores
a set by the mean of its genes' log1p CP10k values, each gene standardised across the spots scored
together (on sparse counts most genes of a spot are zero, so ranks are mostly ties and rank scores
mostly noise); ``activation_weight`` adds the kernel ``S^act`` on the cosine of the spots' activation
profiles (every activated entity z-scored across the spots), weighted like a family.

``KGPrior.encode`` packs all families' unit vectors into one (n, D) tensor per dataset so that
``pair_weights_from_packed`` recovers W for a batch with a few matrix products, on CPU or GPU.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from scipy.stats import rankdata
from tqdm.auto import tqdm

from histokg.config import check
from histokg.errors import ConfigError, InputError
from histokg.registry import Registry
from pathways_kg.bundle import Bundle, load_bundle
from pathways_kg.graph import Graph, read_graph
from pathways_kg.schema import FAMILIES, RELATIONS, type_of

logger = logging.getLogger(__name__)

_ACTIVATED_TYPES = ("pathway", "celltype", "phenotype")
ACTIVATION_KERNEL = "activation"  # the kernel on whole activation profiles (PriorConfig.activation_weight)


#: the relation families ``prior.alpha`` weighs, found by the naming rule (``Membership`` is ``membership``)
FAMILY_NAMES: Registry[str] = Registry(FAMILIES, "relation family", plural="families")


class PriorError(InputError):
    """The data and the KG bundle do not fit together (too few shared genes, wrong shapes, wrong model)."""


@dataclass(frozen=True)
class PriorConfig:
    """How spots become KG activations and pair weights (see the module docstring for the formulas)."""

    bundle: str | None = None  # path of a pathways_kg embedding bundle
    alpha: dict[str, float] = field(
        default_factory=lambda: {"membership": 1.0, "marker": 1.0, "composition": 0.5, "hierarchical": 0.5}
    )
    tau: float = 0.5  # kernel width of S^r = exp((cos - 1) / tau)
    temperature: float = 0.5  # softmax temperature over z-scored activations within a family
    min_genes: int = 5  # a pathway is scored directly if this many of its genes are in the data
    min_markers: int = 2  # a cell type is scored directly if this many of its markers are in the data
    score: str = "rank"  # "rank" (mean normalised rank) | "mean" (mean value as given) | "zmean" (see below)
    propagate: str = "max"  # how children's activations reach a parent: "max" | "mean"
    layer: str | None = None  # AnnData layer to score; None: .X
    chunk_size: int = 4096  # spots scored at a time
    normalize_alpha: bool = (
        True  # divide alpha by its sum, so that W is in [0, 1] (diagonal 1), as the losses expect
    )
    # weight of one more kernel, on the spots' whole activation profiles (every activated entity,
    # each z-scored across the spots encoded together), next to the per-family KG kernels
    activation_weight: float = 0.0
    # over which spots :meth:`KGPrior.encode` standardises (zmean's gene statistics, the activation
    # kernel's z-scores): "all" spots encoded together, or each "section" on its own (encode's groups),
    # which removes a section's or patient's overall shift in expression before spots are compared
    standardise: str = "all"

    def __post_init__(self) -> None:
        # the families under their registered names (an unknown one is refused when the prior is built)
        alpha = {FAMILY_NAMES.canonical(f): w for f, w in self.alpha.items()}
        check(len(alpha) == len(self.alpha), "alpha", f"{list(self.alpha)} name a family twice")
        object.__setattr__(self, "alpha", alpha)


class KGPrior:
    """Relation-typed pair weights between spots from a KG embedding bundle. Build with :meth:`from_bundle`."""

    def __init__(self, bundle: Bundle, graph: Graph, gene_names: Sequence[str], cfg: PriorConfig) -> None:
        _check_config(cfg)
        self.cfg = cfg
        self.bundle = bundle
        self.gene_names = tuple(str(g) for g in gene_names)
        self._gene_index = _first_index(self.gene_names)
        self._build_sets(graph)
        self._build_propagation(graph)
        self._build_families(graph)

    @classmethod
    def from_bundle(
        cls,
        bundle: str | Path | Bundle,
        gene_names: Sequence[str],
        cfg: PriorConfig | None = None,
        graph: Graph | None = None,
    ) -> KGPrior:
        """Prior for data whose columns are ``gene_names`` (e.g. ``adata.var_names``).

        ``graph`` defaults to the graph files stored in the bundle folder.
        """
        cfg = cfg or PriorConfig()
        bundle = load_bundle(bundle)
        if graph is None:
            if bundle.path is None:
                raise PriorError("an in-memory bundle needs its graph: pass graph=read_graph(graph_dir)")
            graph = read_graph(bundle.path)
        return cls(bundle, graph, gene_names, cfg)

    # ------------------------------------------------------------------ construction
    def _build_sets(self, graph: Graph) -> None:
        """Gene-set matrix M (genes x directly scored sets), columns normalised to mean."""
        minimum = {"member_of": self.cfg.min_genes, "marker_of": self.cfg.min_markers}
        rows, cols, set_ids, overlaps = [], [], [], []
        for relation in ("member_of", "marker_of"):
            for set_id, genes in sorted(graph.gene_sets(relation).items()):
                idx = sorted({self._gene_index[g] for g in genes if g in self._gene_index})
                if len(idx) < minimum[relation] or set_id not in self.bundle.entity_index:
                    continue
                rows.extend(idx)
                cols.extend([len(set_ids)] * len(idx))
                set_ids.append(set_id)
                overlaps.append(len(idx))
        if not set_ids:
            shared = len(
                {e.head.partition(":")[2] for e in graph.edges_of(["member_of", "marker_of"])}
                & set(self._gene_index)
            )
            raise PriorError(
                f"no pathway has >= min_genes={self.cfg.min_genes} and no cell type >= min_markers={self.cfg.min_markers} "
                f"genes in the data ({shared} of the data's {len(self.gene_names)} genes are in the KG); check that "
                "var_names are gene symbols and that the bundle was built for this gene universe"
            )
        weights = 1.0 / np.repeat(np.asarray(overlaps, dtype=np.float64), overlaps)
        order = np.argsort(np.asarray(cols, dtype=np.int64), kind="stable")
        self._set_matrix = sp.csr_matrix(
            (weights, (np.asarray(rows)[order], np.asarray(cols)[order])),
            shape=(len(self.gene_names), len(set_ids)),
        )
        self._direct_ids = set_ids
        by_type = collections.Counter(type_of(s) for s in set_ids)
        logger.info("scoring %s directly (median overlap %d genes)", dict(by_type), int(np.median(overlaps)))

    def gene_set_incidence(self, genes: Sequence[str], min_genes: int = 2) -> tuple[np.ndarray, list[str]]:
        """The directly scored gene sets (pathways, cell-type marker sets) restricted to ``genes``: a 0/1
        matrix (sets x genes) of the sets holding at least ``min_genes`` of them, and the sets' ids."""
        member = (self._set_matrix > 0).astype(np.float32).tocsr()  # data genes x sets
        rows = np.array([self._gene_index.get(str(g), -1) for g in genes], dtype=np.int64)
        known = rows >= 0
        out = np.zeros((member.shape[1], len(rows)), np.float32)
        out[:, known] = member[rows[known]].toarray().T
        keep = out.sum(axis=1) >= min_genes
        return out[keep], [s for s, k in zip(self._direct_ids, keep, strict=True) if k]

    def _build_propagation(self, graph: Graph) -> None:
        """Column order of the activations and the three propagation stages."""
        defined = set(self._direct_ids)
        hier = [
            (e.head, e.tail)
            for e in graph.edges_of([r for r, s in RELATIONS.items() if s.family == "hierarchical"])
        ]
        lower = [(c, p) for c, p in hier if type_of(c) != "phenotype"]
        upper = [(c, p) for c, p in hier if type_of(c) == "phenotype"]
        defined |= _reachable(lower, defined)
        comp = [
            (e.head, e.tail)
            for e in graph.edges_of([r for r, s in RELATIONS.items() if s.family == "composition"])
        ]
        comp = [(ph, part) for ph, part in comp if part in defined and part in self.bundle.entity_index]
        defined |= {ph for ph, _ in comp}
        defined |= _reachable(upper, defined)
        defined = {d for d in defined if d in self.bundle.entity_index}
        order = {t: i for i, t in enumerate(_ACTIVATED_TYPES)}
        self.entity_ids: tuple[str, ...] = tuple(sorted(defined, key=lambda e: (order[type_of(e)], e)))
        self.entity_types: tuple[str, ...] = tuple(type_of(e) for e in self.entity_ids)
        col = {e: i for i, e in enumerate(self.entity_ids)}
        self._direct_cols = np.array([col[s] for s in self._direct_ids], dtype=np.int64)
        self._own = np.zeros(len(self.entity_ids), dtype=bool)
        self._own[self._direct_cols] = True
        self._lower_levels = _levels([(col[c], col[p]) for c, p in lower if c in col and p in col])
        self._upper_levels = _levels([(col[c], col[p]) for c, p in upper if c in col and p in col])
        comp = [(col[ph], col[part]) for ph, part in comp if ph in col]
        phen = sorted({ph for ph, _ in comp})
        self._comp_targets = np.array(phen, dtype=np.int64)
        pos = {ph: i for i, ph in enumerate(phen)}
        self._comp_matrix = sp.csr_matrix(
            (np.ones(len(comp)), ([part for _, part in comp], [pos[ph] for ph, _ in comp])),
            shape=(len(self.entity_ids), len(phen)),
        )
        # before the is_a stage every column has a value except phenotypes without a composition
        self._upper_own = np.array([t != "phenotype" for t in self.entity_types])
        self._upper_own[self._comp_targets] = True
        counts = np.asarray(self._comp_matrix.sum(axis=0)).ravel()
        self._comp_matrix = self._comp_matrix @ sp.diags(1.0 / np.maximum(counts, 1))

    def _build_families(self, graph: Graph) -> None:
        """Anchors and centred KG vectors per relation family."""
        col = {e: i for i, e in enumerate(self.entity_ids)}
        vectors = np.asarray(self.bundle.entity_vectors(), dtype=np.float32)
        touched: dict[str, set[str]] = collections.defaultdict(set)
        for e in graph.edges:
            touched[RELATIONS[e.relation].family].update((e.head, e.tail))
        self._anchors: dict[str, np.ndarray] = {}
        self._phi: dict[str, np.ndarray] = {}
        for family in FAMILIES:
            anchors = sorted(col[x] for x in touched.get(family, ()) if x in col)
            if len(anchors) < 2:
                continue
            rows = np.array([self.bundle.entity_index[self.entity_ids[a]] for a in anchors])
            phi = vectors[rows]
            self._anchors[family] = np.asarray(anchors, dtype=np.int64)
            self._phi[family] = phi - phi.mean(axis=0, keepdims=True)
        self.families: tuple[str, ...] = tuple(self._anchors)
        self.family_dims: dict[str, int] = {f: int(self._phi[f].shape[1]) for f in self.families}
        missing = [f for f, a in self.cfg.alpha.items() if a != 0 and f not in self._anchors]
        if missing:
            logger.warning(
                "alpha names families with no activated entities in this graph: %s (ignored)", missing
            )
        self.alpha: dict[str, float] = {f: float(self.cfg.alpha.get(f, 0.0)) for f in self.families}
        dims = dict(self.family_dims)
        # the kernels W sums: the KG families, and the activation-profile kernel when it has weight
        self.kernels: tuple[str, ...] = self.families
        if self.cfg.activation_weight > 0:
            self.kernels = (*self.families, ACTIVATION_KERNEL)
            self.alpha[ACTIVATION_KERNEL] = float(self.cfg.activation_weight)
            dims[ACTIVATION_KERNEL] = len(self.entity_ids)
        total = sum(self.alpha.values())
        if self.cfg.normalize_alpha and total > 0:
            self.alpha = {f: a / total for f, a in self.alpha.items()}
        offsets = np.cumsum([0] + [dims[f] for f in self.kernels])
        self._slices = {f: slice(int(offsets[i]), int(offsets[i + 1])) for i, f in enumerate(self.kernels)}
        self._dims = dims

    # ------------------------------------------------------------------ activations
    def activations(self, X: Any) -> np.ndarray:
        """KG activations (n_spots, len(entity_ids)) of expression X (dense, sparse or AnnData)."""
        X = self._matrix(X)
        n = X.shape[0]
        stats = None
        if self.cfg.score == "zmean":  # genes standardised over all the spots scored together
            X = _log1p_cp10k(X)
            stats = _column_stats(X)
        out = np.empty((n, len(self.entity_ids)), dtype=np.float32)
        starts = range(0, n, self.cfg.chunk_size)
        for start in tqdm(starts, desc="KG activations", disable=len(starts) < 4, leave=False):
            block = X[start : start + self.cfg.chunk_size]
            out[start : start + block.shape[0]] = self._activate(block, stats)
        return out

    def _activate(self, block: Any, stats: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        dense = block.toarray() if sp.issparse(block) else np.asarray(block)
        dense = dense.astype(np.float64, copy=False)
        if not np.isfinite(dense).all():
            raise PriorError("expression contains NaN or infinite values")
        if self.cfg.score == "rank":
            dense = rankdata(dense, axis=1, method="average") / dense.shape[1]
        elif self.cfg.score == "zmean":
            assert stats is not None
            mean, std = stats
            dense = np.where(std > 0, (dense - mean) / np.where(std > 0, std, 1.0), 0.0)
        scores = np.asarray((self._set_matrix.T @ dense.T).T)
        acts = np.full((dense.shape[0], len(self.entity_ids)), np.nan)
        acts[:, self._direct_cols] = scores
        _propagate(acts, self._lower_levels, self._own, self.cfg.propagate)
        if len(self._comp_targets):
            acts[:, self._comp_targets] = np.asarray(np.nan_to_num(acts) @ self._comp_matrix)
        _propagate(acts, self._upper_levels, self._upper_own, self.cfg.propagate)
        return acts

    # ------------------------------------------------------------------ representations
    def spot_representations(
        self, data: Any, *, from_activations: bool | None = None
    ) -> dict[str, np.ndarray]:
        """Per-family unit vectors (n_spots, d_family) from expression or from :meth:`activations` output."""
        acts = self._as_activations(data, from_activations)
        reps = {}
        for family in self.families:
            w = _softmax_z(acts[:, self._anchors[family]], self.cfg.temperature)
            z = w @ self._phi[family]
            reps[family] = (z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)).astype(
                np.float32
            )
        if ACTIVATION_KERNEL in self.kernels:
            a = np.nan_to_num(np.asarray(acts, dtype=np.float64))
            a = (a - a.mean(axis=0)) / np.maximum(a.std(axis=0), 1e-12)
            reps[ACTIVATION_KERNEL] = (
                a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
            ).astype(np.float32)
        return reps

    def encode(self, data: Any, groups: Sequence[Any] | np.ndarray | None = None) -> torch.Tensor:
        """All families' representations packed into one float32 tensor (n_spots, D) for the trainer.

        ``groups`` (one label per spot, e.g. its section) matter with ``standardise="section"``: each
        group is then encoded on its own. Without them every spot is one group.
        """
        if self.cfg.standardise == "section" and groups is not None:
            X = self._matrix(data)
            labels = np.asarray(groups)
            if labels.shape != (X.shape[0],):
                raise PriorError(f"groups: {labels.shape[0]} labels for {X.shape[0]} spots")
            out = torch.empty((X.shape[0], self.packed_dim), dtype=torch.float32)
            for label in dict.fromkeys(labels.tolist()):
                rows = np.flatnonzero(labels == label)
                out[torch.from_numpy(rows)] = self.encode(X[rows])
            return out
        reps = self.spot_representations(data)
        return torch.from_numpy(np.concatenate([reps[f] for f in self.kernels], axis=1))

    def unpack(self, packed: torch.Tensor) -> dict[str, torch.Tensor]:
        if packed.shape[-1] != self.packed_dim:
            raise PriorError(
                f"packed tensor has {packed.shape[-1]} columns; this prior packs {self.packed_dim}"
            )
        return {f: packed[..., s] for f, s in self._slices.items()}

    @property
    def scored_directly(self) -> tuple[str, ...]:
        """Ids of the gene sets scored from expression (pathways with >= min_genes, cell types with
        >= min_markers genes in the data); the other activations are propagated from these."""
        return tuple(self._direct_ids)

    @property
    def packed_dim(self) -> int:
        return sum(self._dims[k] for k in self.kernels)

    def pair_weights(self, reps: Mapping[str, torch.Tensor | np.ndarray]) -> torch.Tensor:
        """W (b, b) = sum_r alpha_r S^r for a batch's family representations; W >= 0, symmetric."""
        unknown = [f for f in reps if f not in self._slices]
        if unknown:
            raise PriorError(f"unknown relation families {unknown}; this prior has {list(self.kernels)}")
        if not reps:
            raise PriorError("pair_weights needs the representation of at least one relation family")
        tensors = {f: torch.as_tensor(v) for f, v in reps.items()}
        first = next(iter(tensors.values()))
        b = first.shape[0]
        W = torch.zeros(b, b, dtype=torch.float32, device=first.device)
        for family, z in tensors.items():
            a = self.alpha.get(family, 0.0)
            if a == 0.0:
                continue
            z = torch.nn.functional.normalize(z.float(), dim=-1)
            s = (z @ z.T).clamp_(-1.0, 1.0).sub_(1.0).div_(self.cfg.tau).exp_()  # in place: one b x b buffer
            W.add_(s, alpha=a)
        return W

    def pair_weights_from_packed(self, packed: torch.Tensor) -> torch.Tensor:
        """W (b, b) from rows of :meth:`encode` output, on the tensor's device."""
        return self.pair_weights(self.unpack(packed))

    def spot_gaussians(
        self, data: Any, *, from_activations: bool | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per-spot Gaussian in KG space (mean (n, d), var (n, d)) for a KG2E bundle.

        The activation-weighted mixture of the phenotype and cell-type entity Gaussians, reduced to its
        first two moments: mean = sum_e w_e mu_e, var = sum_e w_e (var_e + mu_e^2) - mean^2.
        """
        if self.bundle.storage != "gaussian":
            raise PriorError(f"spot_gaussians needs a KG2E bundle; this one is {self.bundle.model!r}")
        acts = self._as_activations(data, from_activations)
        cols = np.array(
            [i for i, t in enumerate(self.entity_types) if t in ("phenotype", "celltype")], dtype=np.int64
        )
        if len(cols) == 0:
            raise PriorError("no phenotype or cell type is activated by this data")
        mu_all, var_all = self.bundle.gaussians()
        rows = np.array([self.bundle.entity_index[self.entity_ids[c]] for c in cols])
        mu, var = mu_all[rows].astype(np.float64), var_all[rows].astype(np.float64)
        w = _softmax_z(acts[:, cols], self.cfg.temperature)
        mean = w @ mu
        second = w @ (var + mu**2)
        return mean.astype(np.float32), np.maximum(second - mean**2, 1e-8).astype(np.float32)

    # ------------------------------------------------------------------ helpers
    def _as_activations(self, data: Any, from_activations: bool | None) -> np.ndarray:
        if from_activations is None:
            width = _width(data)
            if width == len(self.entity_ids) and width == len(self.gene_names):
                raise PriorError("as many genes as KG entities: pass from_activations=True or False")
            from_activations = width == len(self.entity_ids)
        if not from_activations:
            return self.activations(data)
        acts = np.asarray(data, dtype=np.float64)
        if acts.ndim != 2 or acts.shape[1] != len(self.entity_ids):
            raise PriorError(f"activations must be (n_spots, {len(self.entity_ids)}), got {acts.shape}")
        return acts

    def _matrix(self, data: Any) -> Any:
        if hasattr(data, "var_names") and hasattr(data, "X"):
            names = [str(g) for g in data.var_names]
            X = data.layers[self.cfg.layer] if self.cfg.layer else data.X
            if names != list(self.gene_names):
                index = _first_index(names)
                missing = [g for g in self.gene_names if g not in index]
                if missing:
                    raise PriorError(
                        f"the AnnData lacks {len(missing)} of the prior's genes, e.g. {missing[:3]}"
                    )
                X = X[:, [index[g] for g in self.gene_names]]
            return X
        if not sp.issparse(data):
            data = np.asarray(data)
        if data.ndim != 2 or data.shape[1] != len(self.gene_names):
            raise PriorError(
                f"expression must be (n_spots, {len(self.gene_names)}) in the prior's gene order, got {data.shape}"
            )
        return data

    def describe(self) -> dict[str, Any]:
        """Counts for logs and reports."""
        return {
            "model": self.bundle.model,
            "genes": len(self.gene_names),
            "scored_directly": dict(collections.Counter(type_of(s) for s in self._direct_ids)),
            "activated": dict(collections.Counter(self.entity_types)),
            "families": {f: int(len(self._anchors[f])) for f in self.families},
            "alpha": self.alpha,
            "packed_dim": self.packed_dim,
        }


# --------------------------------------------------------------------------- module helpers


def _check_config(cfg: PriorConfig) -> None:
    for family, value in cfg.alpha.items():
        FAMILY_NAMES.lookup(family, where="prior.alpha")
        if value < 0:
            raise ConfigError(f"prior.alpha.{family}: weights must be >= 0, got {value}")
    if cfg.standardise not in ("all", "section"):
        raise ConfigError(f"prior.standardise: {cfg.standardise!r} is not one of 'all', 'section'")
    if cfg.score not in ("rank", "mean", "zmean"):
        raise ConfigError(f"prior.score: {cfg.score!r} is not one of 'rank', 'mean', 'zmean'")
    if not cfg.activation_weight >= 0:
        raise ConfigError(f"prior.activation_weight: must be >= 0, got {cfg.activation_weight}")
    if cfg.propagate not in ("max", "mean"):
        raise ConfigError(f"prior.propagate: {cfg.propagate!r} is not one of 'max', 'mean'")
    if cfg.tau <= 0 or cfg.temperature <= 0:
        raise ConfigError("prior.tau and prior.temperature must be > 0")


def _first_index(names: Sequence[str]) -> dict[str, int]:
    index: dict[str, int] = {}
    for i, g in enumerate(names):
        index.setdefault(g, i)
    if len(index) < len(names):
        logger.warning(
            "%d duplicate gene names; the first occurrence of each is used", len(names) - len(index)
        )
    return index


def _width(data: Any) -> int:
    if hasattr(data, "var_names") and hasattr(data, "X"):
        return -1  # AnnData is always expression
    return int(data.shape[1])


def _reachable(edges: list[tuple[str, str]], start: set[str]) -> set[str]:
    """Nodes reached from ``start`` by walking child -> parent edges."""
    parents: dict[str, list[str]] = collections.defaultdict(list)
    for c, p in edges:
        parents[c].append(p)
    seen, stack = set(start), list(start)
    while stack:
        for p in parents.get(stack.pop(), ()):
            if p not in seen:
                seen.add(p)
                stack.append(p)
    return seen - start


def _levels(edges: list[tuple[int, int]]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Group child -> parent edges by the parent's height, so each level only reads finished values.

    Returns per level: children (grouped by parent), segment starts, parents.
    """
    if not edges:
        return []
    children: dict[int, list[int]] = collections.defaultdict(list)
    for c, p in edges:
        children[p].append(c)
    height: dict[int, int] = {}

    def h(node: int, trail: tuple[int, ...] = ()) -> int:
        if node in height:
            return height[node]
        if node in trail:
            raise PriorError(f"the KG hierarchy has a cycle through entity column {node}")
        height[node] = 1 + max((h(c, (*trail, node)) for c in children.get(node, ())), default=-1)
        return height[node]

    for p in children:
        h(p)
    out = []
    for level in sorted({height[p] for p in children}):
        parents = sorted(p for p in children if height[p] == level)
        kids = [sorted(children[p]) for p in parents]
        sizes = np.array([len(k) for k in kids], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        out.append((np.concatenate(kids).astype(np.int64), starts, np.array(parents, dtype=np.int64)))
    return out


def _propagate(acts: np.ndarray, levels: list, own: np.ndarray, how: str) -> None:
    """In place: each parent's activation becomes agg(own score, children's activations)."""
    for kids, starts, parents in levels:
        values = acts[:, kids]
        if how == "max":
            agg = np.maximum.reduceat(np.nan_to_num(values, nan=-np.inf), starts, axis=1)
            agg = np.where(np.isneginf(agg), np.nan, agg)
            acts[:, parents] = np.where(own[parents], np.fmax(acts[:, parents], agg), agg)
        else:
            valid = ~np.isnan(values)
            total = np.add.reduceat(np.where(valid, values, 0.0), starts, axis=1)
            count = np.add.reduceat(valid.astype(np.float64), starts, axis=1)
            mine = np.where(own[parents], acts[:, parents], np.nan)
            has = ~np.isnan(mine)
            total = total + np.where(has, mine, 0.0)
            count = count + has
            with np.errstate(invalid="ignore", divide="ignore"):
                acts[:, parents] = np.where(count > 0, total / count, np.nan)


def _log1p_cp10k(X: Any) -> Any:
    from histokg.pp import log1p_cp10k

    return log1p_cp10k(X)


def _column_stats(X: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and standard deviation over the rows (sparse or dense)."""
    mean = np.asarray(X.mean(axis=0), dtype=np.float64).ravel()
    sq = X.multiply(X) if sp.issparse(X) else np.asarray(X, dtype=np.float64) ** 2
    var = np.asarray(sq.mean(axis=0), dtype=np.float64).ravel() - mean**2
    return mean, np.sqrt(np.maximum(var, 0.0))


def _softmax_z(a: np.ndarray, temperature: float) -> np.ndarray:
    """Row-wise softmax of activations z-scored across the columns."""
    z = (a - a.mean(axis=1, keepdims=True)) / (a.std(axis=1, keepdims=True) + 1e-6)
    z = z / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
