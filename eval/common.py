"""The evaluation CLIs' shared plumbing, by job (this module re-exports them so that older imports keep working):

* :mod:`eval.arguments`: ``add_model_arguments``, ``add_dataset_arguments``, ``add_saliency_arguments``,
  ``parse_key_values``, ``model_from_args``, ``resolve_root``, ``dataset_from_args``;
* :mod:`eval.splits`: ``seeded_split``, ``resolve_split``;
* :mod:`eval.saliency_source`: ``SaliencySource``;
* :mod:`eval.stream`: ``collate_samples``, ``iter_model_outputs``;
* :mod:`eval.caches`: ``checkpoint_fingerprint``, ``StreamCache``;
* :mod:`eval.outputs`: ``quiet_faiss``, ``ensure_new_file``, ``jsonable``, ``write_json``, ``colorize``,
  ``save_panel``, ``safe_name``;
* :mod:`maskcontrast.embeddings`: ``normalised_pixels``, ``masked_mean_embedding``, ``CHUNK_BYTES``.

New code imports from those homes.
"""

from eval.arguments import (
    add_dataset_arguments,
    add_model_arguments,
    add_saliency_arguments,
    dataset_from_args,
    model_from_args,
    parse_key_values,
    resolve_root,
)
from eval.caches import StreamCache, checkpoint_fingerprint
from eval.outputs import colorize, ensure_new_file, jsonable, quiet_faiss, safe_name, save_panel, write_json
from eval.saliency_source import SaliencySource
from eval.splits import resolve_split, seeded_split
from eval.stream import collate_samples, iter_model_outputs
from maskcontrast.embeddings import CHUNK_BYTES, masked_mean_embedding, normalised_pixels

__all__ = [
    "add_model_arguments",
    "add_dataset_arguments",
    "add_saliency_arguments",
    "parse_key_values",
    "model_from_args",
    "resolve_root",
    "dataset_from_args",
    "seeded_split",
    "resolve_split",
    "SaliencySource",
    "collate_samples",
    "iter_model_outputs",
    "normalised_pixels",
    "masked_mean_embedding",
    "CHUNK_BYTES",
    "StreamCache",
    "checkpoint_fingerprint",
    "ensure_new_file",
    "quiet_faiss",
    "write_json",
    "jsonable",
    "colorize",
    "save_panel",
    "safe_name",
]
