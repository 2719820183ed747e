"""Check that a model source can be loaded before ``from_pretrained`` runs: one line naming it and what to pass.

``from_pretrained`` reads a missing local path as a Hub id ("Repo id must use alphanumeric chars") and, offline,
ends a long traceback with an ``OSError``. :func:`check_model_source` fails at once instead, with a
:class:`~visalign.errors.NotFoundError` (the CLI prints it as one line and exits 2), when ``spec`` is

- a path that does not exist: anything that is not a valid Hub id (``./x``, ``/x``, ``~/x``, ``a/b/c``);
- a Hub id while ``HF_HUB_OFFLINE`` is set and the Hugging Face cache holds no snapshot of it (a cache lookup only).

Every loading path calls it through :func:`visalign.models.builtin.resolve_model` (diffusion models and VAEs, VLMs,
causal LMs, pipelines for evaluation) or directly (reward-model weights).
"""

from __future__ import annotations

import os
from pathlib import Path

from visalign.errors import NotFoundError

def check_model_source(spec: str | os.PathLike, *, revision: str | None = None, what: str = "model") -> str:
    """``spec`` as a string once it names an existing path or a loadable Hub id (module docstring); ``what`` names
    the component in the error (``"model"``, ``"VAE"``, ``"scorer weights"``)."""
    spec = os.fspath(spec)
    if Path(spec).expanduser().exists():
        return spec
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(spec)
    except HFValidationError:
        raise NotFoundError(f"{what} {spec!r}: no such file or folder; pass an existing folder or a Hugging Face "
                            "Hub id") from None
    if constants.is_offline_mode():
        try:
            snapshot_download(spec, revision=revision, local_files_only=True)
        except LocalEntryNotFoundError:
            raise NotFoundError(
                f"{what} {spec!r} is not in the Hugging Face cache and HF_HUB_OFFLINE is set: download it first "
                f"(`hf download {spec}`), unset HF_HUB_OFFLINE, or pass a local folder"
            ) from None
    return spec
