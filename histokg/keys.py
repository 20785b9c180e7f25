"""Names of what histokg reads and writes in AnnData (and in a training batch), in one place.

The AnnData contract (see :mod:`histokg.st.contract`) in names, as squidpy's ``Key`` spells its own::

    adata.obs[Key.obs.library_id]                                   slide of each spot
    adata.obsm[Key.obsm.spatial]                                    (n, 2) level-0 pixels, column 0 = x
    adata.uns[Key.uns.spatial][library_id]                          the slide's entry:
        [Key.uns.images][Key.uns.hires]                             uint8 thumbnail
        [Key.uns.scalefactors][Key.scalefactors.<field>]            thumbnail scale, spot diameter
        [Key.uns.metadata][Key.metadata.<field>]                    slide path, MPP, reader, ...
    adata.layers[Key.layers.counts], adata.var[Key.var.gene_ids]
    adata.uns[Key.uns.histokg][Key.histokg.<field>]                 the model that embedded / predicted:
        [Key.histokg.params][Key.params.<field>]                    the model (checkpoint hash, panel, ...)
        [Key.histokg.prediction][key][Key.prediction.<field>]       one prediction (method, where, ...)
    adata.layers[pred_key(method)] (or obsm)                        predicted expression (histokg.tl.predict)

Values shared with scanpy and squidpy (``obsm["spatial"]``, ``uns["spatial"]`` and its entry,
``layers["counts"]``, ``var["gene_ids"]``) are theirs; the others are already in users' .h5ad files:
none may change. ``tests/test_keys.py`` checks the shared ones against squidpy and scanpy, and that
no module spells a key as a string literal. A new key is one line here, used by its name.

The embedding keys: ``tl.embed(adata, key_added=K)`` writes the image tower to ``obsm[K]`` and the
expression tower to ``obsm[expr_key(K)]``; everything that reads embeddings derives the second from
the first, so a custom ``key_added`` works end to end. ``IMAGE``, ``EXPR`` and ``UNS`` are the
defaults (also ``Key.obsm.image``, ``Key.obsm.expr``, ``Key.uns.histokg``).
"""

from __future__ import annotations

IMAGE = "X_histokg"  # obsm: image-tower embeddings (L2-normalised)
UNS = "histokg"  # uns: params of the model that embedded (checkpoint hash, panel, slides)


def expr_key(image_key: str = IMAGE) -> str:
    """The obsm key of the expression-tower embeddings that go with image embeddings ``image_key``."""
    return f"{image_key}_expr"


EXPR = expr_key(IMAGE)  # obsm: expression-tower embeddings
PRED_PREFIX = "pred_"  # layers/obsm keys of predicted expression start with it


def pred_key(method: str) -> str:
    """Where :func:`histokg.tl.predict_expression` puts ``method``'s prediction by default (layers/obsm)."""
    return f"{PRED_PREFIX}{method}"


def sd_key(pred: str) -> str:
    """The layer/obsm key of the kNN neighbours' spread of prediction ``pred`` (``histokg predict``)."""
    return f"{pred}_sd"


def interval_key(pred: str, level: float = 0.9) -> str:
    """The layer/obsm key of the half-width of the ``level`` interval of prediction ``pred``: ``pred_knn_hw90``."""
    return f"{pred}_hw{round(level * 100):d}"


class Key:
    """AnnData keys by container: ``Key.obs.library_id``, ``Key.obsm.spatial``, ``Key.uns.spatial``, ..."""

    class obs:
        """Columns of ``adata.obs``."""

        library_id = "library_id"  # categorical slide id; also the concat label of several sections
        barcode = "barcode"  # the spot's id in its input (obs_names are "<library_id>_<barcode>")
        in_tissue = "in_tissue"  # bool flag (see histokg.st.contract.bool_flag)
        # the spot's grid position: Visium, Visium HD and Xenium pseudo-spots (scanpy's names) ...
        array_row = "array_row"
        array_col = "array_col"
        # ... legacy ST (the x/y of its spot ids)
        array_x = "array_x"
        array_y = "array_y"
        n_cells = "n_cells"  # Xenium: cells in the pseudo-spot
        tissue_fraction = "tissue_fraction"  # tiles of a bare slide: fraction of the tile on tissue
        # written by histokg.st.pairing.flag_spots (bool flags and the fraction they come from)
        patch_partial = "patch_partial"
        on_tissue_mask = "on_tissue_mask"
        patch_tissue_fraction = "patch_tissue_fraction"
        region = "region"  # ground-truth region of a synthetic study's spot; the default label column
        label = "label"  # expression cluster labels joined by the benchmark (its default label_key)
        cluster = "histokg_leiden"  # Leiden clusters of the embeddings (histokg.tl.cluster)

    class obsm:
        """Arrays of ``adata.obsm``."""

        spatial = "spatial"  # (n, 2) float spot centres in level-0 pixels, column 0 = x
        image = IMAGE  # image-tower embeddings
        expr = EXPR  # expression-tower embeddings
        truth = "truth"  # a synthetic study's ground truth per spot (cell-type fractions, ...)
        umap = "X_umap"  # scanpy's UMAP (histokg.tl.cluster with umap=True)
        # histokg predict: KG pathway scores transferred from the reference (DataFrame over entity ids)
        pred_pathways = "pred_pathways"

    class obsp:
        """Graphs of ``adata.obsp`` (squidpy's spatial graph)."""

        spatial_connectivities = "spatial_connectivities"
        spatial_distances = "spatial_distances"

    class uns:
        """Entries of ``adata.uns``."""

        spatial = "spatial"  # uns["spatial"][library_id]: the slide's entry, with the three below
        images = "images"  # entry["images"]["hires"]: uint8 thumbnail
        hires = "hires"
        scalefactors = "scalefactors"  # entry["scalefactors"]: the fields of Key.scalefactors
        metadata = "metadata"  # entry["metadata"]: the fields of Key.metadata
        histokg = UNS  # the model that embedded / predicted: the fields of Key.histokg
        # written by histokg.tl
        moran = "histokg_moran"  # tidy Moran's I per library and feature
        moran_pooled = "moranI"  # squidpy's name: Moran's I pooled over libraries
        spatial_statistics = "histokg_spatial"  # parameters of tl.spatial_statistics
        kg_scores = "histokg_kg_scores"  # columns and parameters of tl.kg_scores
        cluster_params = "params"  # uns[<cluster key>]["params"]: scanpy's Leiden record (tl.cluster)

    class layers:
        """Matrices of ``adata.layers``."""

        counts = "counts"  # raw counts (CSR; integer unless the input held fractions)
        # predicted log1p CP10k (histokg.tl.predict; obsm DataFrames when the panel is not var)
        pred_knn = pred_key("knn")
        pred_ridge = pred_key("ridge")
        pred_blend = pred_key("blend")
        pred_disagreement = pred_key("disagreement")  # histokg predict --method blend: |knn - ridge|

    class var:
        """Columns of ``adata.var``."""

        gene_ids = "gene_ids"  # stable ids where known (";"-joined for genes summed from several columns)

    class scalefactors:
        """Fields of ``uns["spatial"][library_id]["scalefactors"]`` (Space Ranger's names, read by scanpy)."""

        tissue_hires_scalef = "tissue_hires_scalef"  # thumbnail px per level-0 px
        spot_diameter_fullres = "spot_diameter_fullres"  # spot diameter in level-0 px
        tissue_lowres_scalef = "tissue_lowres_scalef"  # Visium: Space Ranger's lowres PNG, kept as it came

    class metadata:
        """Fields of ``uns["spatial"][library_id]["metadata"]``."""

        source_image_path = "source_image_path"  # absolute path of the slide ("" when none)
        mpp = "mpp"  # microns per level-0 pixel
        counts_integer = "counts_integer"  # False when the counts are fractions (kept, not rounded)
        # added by the readers (histokg.st.reader)
        mpp_source = "mpp_source"  # where the MPP came from
        reader = "reader"  # the reader's name
        spot_diameter_um = "spot_diameter_um"
        spot_diameter_source = "spot_diameter_source"  # where the spot diameter came from
        source_path = "source_path"  # the input folder or file (Visium, Visium HD, Xenium, HEST)
        spot_shape = "spot_shape"  # "square" for bins and pseudo-spots (Visium HD, Xenium)
        # (a reader's own fields, e.g. legacy ST's "pitch_px", Xenium's "min_qv", are named in that reader)

    class histokg:
        """Fields of ``uns["histokg"]``."""

        params = "params"  # the model's params (checkpoint hash, gene panel, patch size, MPP, ...)
        panel = "panel"  # genes of a prediction AnnData (histokg.tl.predict)
        measured = "measured"  # whether X holds measured expression
        absent_genes = "absent_genes"  # panel genes the measured data lacks (measured zeros)
        prediction = "prediction"  # layer name -> method and parameters
        pairing = "pairing"  # the patch geometry and slides of histokg.st.pairing.pair_spots
        predict = "predict"  # histokg predict: observations, method, reference, interval, KG bundle

    class params:
        """Fields of ``uns["histokg"]["params"]`` (histokg.tl.embed: the model that embedded)."""

        model = "model"  # image encoder name
        loss = "loss"  # training loss name
        checkpoint = "checkpoint"  # checkpoint path
        checkpoint_sha256 = "checkpoint_sha256"  # the checkpoint file's hash
        patch_um = "patch_um"
        patch_px = "patch_px"
        mpp = "mpp"  # microns per pixel of the patches
        embed_dim = "embed_dim"
        genes = "genes"  # the model's gene panel
        train_slides = "train_slides"
        val_slides = "val_slides"  # slides that validated the run (early stopping, best.pt)
        validation_chose = "validation_chose"  # whether val_slides chose this checkpoint (absent: assume so)
        image_extras = "image_extras"  # extra image-head inputs (model.image_extras), e.g. ["naive"]

    class prediction:
        """Fields of one record ``uns["histokg"]["prediction"][key]`` (histokg.tl.predict)."""

        method = "method"  # "knn" or "ridge"
        params = "params"  # the method's parameters (k, temperature / alpha)
        use_rep = "use_rep"  # obsm key of the query's image embeddings
        ref_rep = "ref_rep"  # obsm key of the reference embeddings searched or fitted
        reference_libraries = "reference_libraries"
        reference_n_spots = "reference_n_spots"
        checkpoint_sha256 = "checkpoint_sha256"  # the checkpoint that embedded ("" when unknown)
        normalisation = "normalisation"  # what the values are, in words
        where = "where"  # "layers" or "obsm": the container holding the prediction
        genes = "genes"  # (obsm only) the columns of the prediction
        n_predicted = "n_predicted"  # (histokg.tl.add_predictions) spots with a prediction


class SData:
    """Names SpatialData and spatialdata-io use for a table annotating shapes (``histokg export spatialdata``)."""

    region_key = "region"  # obs column: the shapes element each row annotates
    instance_key = "instance_id"  # obs column: the row's index in that shapes element
    image = "{}_full_image"  # the slide, by library id
    shapes = "{}_shapes"  # spots or tiles, by library id
    table = "table"
    embeddings = (
        "histokg_embeddings"  # table of embeddings written into a store (``histokg embed-spatialdata``)
    )
    microns = "microns"  # coordinate system scaled by the MPP (``global`` is level-0 pixels)


class Batch:
    """Keys of one training/embedding item (``SpotPatchDataset``) and of a collated batch."""

    image = "image"  # (3, H, W) float patch in [0, 1] (absent when images are not loaded)
    expr = "expr"  # the expression tower's input
    spot_id = "spot_id"
    slide_id = "slide_id"  # the spot's library_id
    index = "index"  # the spot's row in the dataset
    # extra inputs of the KG losses (histokg.train.data.build_split)
    kg = "kg"  # packed KG activations of the prior
    gauss_mean = "g_mean"  # KG2E Gaussian of the spot
    gauss_var = "g_var"
    features = "features"  # precomputed patch features (the benchmark's frozen tower)
