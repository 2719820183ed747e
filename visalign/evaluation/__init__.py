"""Evaluation: generate-and-score, win rates with confidence intervals, reports (reference diffusion-methods.md §16).

- ``generate``: ``GenerationSettings``, ``Sample``, ``sample_seed``, ``load_prompts``, ``load_pipeline``,
  ``generate_images`` (resumable, manifest), ``read_manifest``, ``score_samples``
- ``winrate``: ``head_to_head`` -> ``HeadToHead``, ``outcomes``, ``bootstrap_means``, ``percentile_interval``
- ``report``: ``compare_models`` (A vs B end to end), ``ModelSpec``, ``ScorerSpec``, ``write_report``,
  ``render_markdown``, ``comparison_grid``
- ``html_report``: ``write_html_report``, ``render_html`` (``report.html``: the report as a self-contained page)
- ``pairs``: ``generate_preference_pairs`` (sample K per prompt, score, best vs worst), ``select_pairs``
- ``validation``: validation images during training
- ``scorer_specs``: scorer options as text (``NAME=MODEL``, ``KEY=VALUE``) -> ``build_scorer`` / ``parse_scorers``

Names are re-exported lazily, so importing one submodule does not import the others.
"""

from importlib import import_module

_EXPORTS = {
    "generate": ("GenerationSettings", "Sample", "sample_seed", "load_prompts", "load_pipeline", "generate_images",
                 "read_manifest", "score_samples"),
    "winrate": ("HeadToHead", "head_to_head", "outcomes", "bootstrap_means", "percentile_interval"),
    "report": ("compare_models", "ModelSpec", "ScorerSpec", "write_report", "render_markdown", "comparison_grid"),
    "html_report": ("write_html_report", "render_html"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'visalign.evaluation' has no attribute {name!r}")
    return getattr(import_module(f"visalign.evaluation.{_MODULE_OF[name]}"), name)
