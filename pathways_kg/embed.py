"""Train a KG embedding with pykeen's pipeline and evaluate it against a random-embedding baseline.

The graph's triples are split (seeded) into train/valid/test; the pipeline trains the registered model
and evaluates filtered rank-based metrics (MRR, Hits@1/3/10) on the test triples, filtering every
known triple (train + valid + test). The random baseline applies the same evaluator, with the same
filter, to the same model class with freshly initialised, untrained parameters.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import sys
import time
import warnings
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from pathways_kg.bundle import Bundle, save_bundle
from pathways_kg.config import EmbedConfig, check_embed, to_dict
from pathways_kg.errors import KGError
from pathways_kg.graph import Graph, read_graph, resolve_graph_dir
from pathways_kg.io import file_sha256
from pathways_kg.models import KGModel, get_model
from pathways_kg.registry import check_kwargs, unknown_name
from pathways_kg.schema import RELATIONS

logger = logging.getLogger(__name__)

METRICS = {
    "mrr": "both.realistic.inverse_harmonic_mean_rank",
    "hits_at_1": "both.realistic.hits_at_1",
    "hits_at_3": "both.realistic.hits_at_3",
    "hits_at_10": "both.realistic.hits_at_10",
    "amri": "both.realistic.adjusted_arithmetic_mean_rank_index",
}


def embed_graph(
    graph_dir: str | Path,
    cfg: EmbedConfig | None = None,
    out_dir: str | Path | None = None,
    progress: bool | None = None,
) -> Bundle:
    """Train ``cfg.model`` on the graph in ``graph_dir``; write a bundle to ``out_dir`` if given.

    ``progress``: show tqdm bars for the training epochs (with the loss) and both evaluations on
    stderr; ``None`` shows them when stderr is a terminal.
    """
    cfg = check_embed(cfg or EmbedConfig())
    spec = get_model(cfg.model.name, "embed.model.name")
    _, triples_path = resolve_graph_dir(graph_dir)
    sha256 = file_sha256(triples_path)
    graph = read_graph(graph_dir)
    if not graph.edges:
        raise KGError(f"{triples_path}: no triples (nothing to embed)")
    model_kwargs = _model_kwargs(spec, cfg.model.kwargs)
    _check_training(cfg)
    if progress is None:
        progress = sys.stderr.isatty()
    result = train(graph, spec, model_kwargs, cfg, progress=progress)
    if file_sha256(triples_path) != sha256:
        raise KGError(f"{triples_path}: changed while the model was training; run embed again")
    result.meta["graph"] = {
        "sha256": sha256,
        "n_entities": len(result.entity_ids),
        "n_relations": len(result.relation_ids),
        "n_triples": len(graph.edges),
        "source_dir": str(Path(graph_dir)),
    }
    if out_dir is not None:
        save_bundle(result, out_dir, graph_dir=graph_dir)
        result = dataclasses.replace(result, path=Path(out_dir))
    return result


def train(
    graph: Graph, spec: type[KGModel], model_kwargs: dict[str, Any], cfg: EmbedConfig, progress: bool = False
) -> Bundle:
    """Run the pykeen pipeline on ``graph``; return an (unsaved) bundle with metrics.

    ``progress`` shows tqdm bars (epochs with the loss, then the evaluations); without them, each
    epoch's loss is logged at INFO.
    """
    import pykeen.version
    import torch
    from pykeen.evaluation import RankBasedEvaluator
    from pykeen.models import model_resolver
    from pykeen.pipeline import pipeline
    from pykeen.training.training_loop import NonFiniteLossError
    from pykeen.triples import TriplesFactory

    labeled = np.array([[e.head, e.relation, e.tail] for e in graph.edges], dtype=str)
    factory = TriplesFactory.from_labeled_triples(labeled, create_inverse_triples=False)
    try:
        with warnings.catch_warnings():  # pykeen divides by zero for tiny graphs; checked below
            warnings.simplefilter("ignore", RuntimeWarning)
            training, validation, testing = factory.split(list(cfg.evaluation.split), random_state=cfg.seed)
    except ValueError as exc:
        raise KGError(
            f"cannot split {len(labeled)} triples with ratios {cfg.evaluation.split}: {exc}"
        ) from None
    sizes = (training.num_triples, validation.num_triples, testing.num_triples)
    if min(sizes) == 0:
        raise KGError(
            f"{len(labeled)} triples are too few to split with ratios {list(cfg.evaluation.split)} "
            f"(train/valid/test sizes {'/'.join(map(str, sizes))}); a KG embedding needs a larger graph"
        )
    evaluated, extra_filter = _subsample(testing, cfg.evaluation.max_triples, cfg.seed)
    device = _device(cfg.device)
    t = cfg.training
    kwargs: dict[str, Any] = {}
    if t.loss is not None:
        kwargs.update(loss=t.loss.name, loss_kwargs=t.loss.kwargs)
    logger.info(
        "training %s (%s) on %d triples, device %s", spec.name, model_kwargs, training.num_triples, device
    )
    training_kwargs: dict[str, Any] = {
        "num_epochs": t.epochs,
        "batch_size": t.batch_size,
        "use_tqdm": progress,
        "use_tqdm_batch": True,  # a nested bar (cleared after each epoch): first epochs can take seconds
        "tqdm_kwargs": {"desc": f"training {spec.name}"},
        "callbacks": [] if progress else [_epoch_log(t.epochs)],
    }
    start = time.perf_counter()
    with _frozen_gc(), warnings.catch_warnings():
        # pykeen pins memory in its data loader; on a CPU-only machine torch warns about it once per run
        warnings.filterwarnings("ignore", message=".*pin_memory.*", category=UserWarning)
        try:
            result = pipeline(
                training=training,
                validation=validation,
                testing=evaluated,
                model=spec.pykeen_name,
                model_kwargs=model_kwargs,
                optimizer=t.optimizer,
                optimizer_kwargs={"lr": t.learning_rate},
                negative_sampler_kwargs={"num_negs_per_pos": t.negatives_per_positive},
                training_kwargs=training_kwargs,
                evaluator=RankBasedEvaluator,
                evaluation_kwargs={
                    "batch_size": cfg.evaluation.batch_size,
                    "additional_filter_triples": list(extra_filter),
                    "use_tqdm": progress,
                    "tqdm_kwargs": {"desc": f"evaluating trained {spec.name}"},
                },
                random_seed=cfg.seed,
                device=device,
                **kwargs,
            )
        except NonFiniteLossError:
            raise KGError(
                f"training {spec.name} diverged: the loss became NaN or infinite; lower "
                f"embed.training.learning_rate (now {t.learning_rate})"
            ) from None
    seconds = time.perf_counter() - start
    trained = {k: float(result.metric_results.get_metric(v)) for k, v in METRICS.items()}
    with _frozen_gc():
        fresh = model_resolver.make(
            spec.pykeen_name, model_kwargs, triples_factory=training, random_seed=cfg.seed + 1
        )
        fresh = fresh.to(result.model.device)
        baseline = RankBasedEvaluator().evaluate(
            fresh,
            evaluated.mapped_triples,
            additional_filter_triples=[training.mapped_triples, validation.mapped_triples, *extra_filter],
            batch_size=cfg.evaluation.batch_size,
            use_tqdm=progress,
            tqdm_kwargs={"desc": f"evaluating random {spec.name} (baseline)"},
        )
    random = {k: float(baseline.get_metric(v)) for k, v in METRICS.items()}
    logger.info(
        "%s: MRR %.4f (random %.4f), Hits@10 %.4f (random %.4f), %.1f s",
        spec.name,
        trained["mrr"],
        random["mrr"],
        trained["hits_at_10"],
        random["hits_at_10"],
        seconds,
    )
    ent_t, rel_t = extract_tensors(result.model, spec.storage)
    for key, value in (*ent_t.items(), *rel_t.items()):
        if not np.isfinite(value).all():
            raise KGError(
                f"training {spec.name} produced non-finite embeddings ({key!r}); lower "
                f"embed.training.learning_rate (now {t.learning_rate})"
            )
    entity_ids = [factory.entity_id_to_label[i] for i in range(factory.num_entities)]
    relation_ids = [factory.relation_id_to_label[i] for i in range(factory.num_relations)]
    vector_dim = int(np.prod(ent_t["entity_mean" if spec.storage == "gaussian" else "entity"].shape[1:]))
    meta = {
        "pykeen_model": spec.pykeen_name,
        "storage": spec.storage,
        "model_kwargs": model_kwargs,
        "embedding_dim": int(model_kwargs.get("embedding_dim", 0)),
        "vector_dim": vector_dim,
        "seed": cfg.seed,
        "epochs": t.epochs,
        "config": to_dict(cfg),
        "metrics": {"trained": trained, "random": random},
        "split": {
            "train": training.num_triples,
            "valid": validation.num_triples,
            "test": testing.num_triples,
            "test_evaluated": evaluated.num_triples,
        },
        "losses": [float(x) for x in result.losses],
        "train_seconds": float(result.train_seconds),
        "total_seconds": float(seconds),
        "device": str(device),
        "versions": {"pykeen": pykeen.version.get_version(), "torch": torch.__version__},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return Bundle(
        model=spec.name,
        entity_ids=tuple(entity_ids),
        entity_types=tuple(graph.entities[e].type for e in entity_ids),
        relation_ids=tuple(relation_ids),
        relation_families=tuple(RELATIONS[r].family for r in relation_ids),
        entity_tensors=ent_t,
        relation_tensors=rel_t,
        meta=meta,
    )


def extract_tensors(model: Any, storage: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Entity and relation tensors of a trained pykeen model, keyed as in the bundle format."""
    import torch

    def get(reps: Any, i: int) -> np.ndarray:
        x = reps[i](indices=None).detach().cpu()
        if torch.is_complex(x):
            x = torch.view_as_real(x)
        return x.float().numpy()

    if storage == "gaussian":
        ents = {
            "entity_mean": get(model.entity_representations, 0),
            "entity_var": get(model.entity_representations, 1),
        }
        rels = {
            "relation_mean": get(model.relation_representations, 0),
            "relation_var": get(model.relation_representations, 1),
        }
        return ents, rels
    return {"entity": get(model.entity_representations, 0)}, {
        "relation": get(model.relation_representations, 0)
    }


def _model_kwargs(spec: type[KGModel], given: dict[str, Any]) -> dict[str, Any]:
    """Registry defaults updated by ``given``; unknown names fail here, not deep inside pykeen."""
    from pykeen.models import model_resolver

    check_kwargs(model_resolver.lookup(spec.pykeen_name), given, f"model {spec.name!r}", **_PYKEEN_ARGS)
    return {**spec.defaults, **given}


def _check_training(cfg: EmbedConfig) -> None:
    """Optimizer and loss names (and loss kwargs) exist in pykeen; errors name the config key."""
    from pykeen.losses import loss_resolver
    from pykeen.optimizers import optimizer_resolver

    t = cfg.training
    named = [("embed.training.optimizer", optimizer_resolver, t.optimizer, None)]
    if t.loss is not None:
        named.append(("embed.training.loss.name", loss_resolver, t.loss.name, t.loss.kwargs))
    for key, resolver, name, kwargs in named:
        try:
            cls = resolver.lookup(name)
        except (KeyError, ValueError, TypeError):
            kind = resolver.base.__name__.lower()
            raise unknown_name(kind, name, sorted(resolver.lookup_dict), where=key) from None
        if kwargs:
            check_kwargs(cls, kwargs, f"{key.rpartition('.')[0]} {name!r}", **_PYKEEN_ARGS)


# the arguments of a pykeen class a config may set: any named one but the triples (given by pathways_kg)
_PYKEEN_ARGS: dict[str, Any] = {"keyword_only": False, "skip": ("triples_factory",)}


def _subsample(testing: Any, max_triples: int | None, seed: int) -> tuple[Any, tuple]:
    """At most ``max_triples`` seeded test triples; the rest stay in the filter."""
    if max_triples is None or testing.num_triples <= max_triples:
        return testing, ()
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(testing.num_triples, size=max_triples, replace=False))
    return testing.clone_and_exchange_triples(testing.mapped_triples[keep]), (testing.mapped_triples,)


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise KGError(f"device {name!r} requested but CUDA is not available")
    if name != "cpu" and not name.startswith("cuda"):
        raise KGError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)")
    return name


def _epoch_log(epochs: int) -> Any:
    """A pykeen training callback that logs each epoch's loss (used when no progress bar is shown)."""
    from pykeen.training.callbacks import TrainingCallback

    class EpochLog(TrainingCallback):
        def post_epoch(self, epoch: int, epoch_loss: float, **kwargs: Any) -> None:
            logger.info("epoch %d/%d: loss %.4f", epoch, epochs, epoch_loss)

    return EpochLog()


@contextlib.contextmanager
def _frozen_gc() -> Iterator[None]:
    """pykeen runs ``gc.collect()`` after every epoch; with torch and pykeen loaded that costs ~0.25 s.
    Freezing the objects that exist before training makes those collections cheap."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
