"""`visalign label`: collect pairwise human preferences in a local web page, and measure how well annotators agree.

    visalign label --pairs DIR_OR_JSONL --out LABELS [--annotator NAME] [--port N] [--host H]
    visalign label --agreement --out LABELS [--scorer NAME [--model PATH]] [--tie-threshold X] [--report FILE.json]
    visalign train --config sd15-dpo --model runwayml/stable-diffusion-v1-5 --dataset LABELS

``--pairs``: a folder from ``pipelines/generate_pairs.py`` (or any paired folder) or a jsonl of ``prompt``,
``image_0``, ``image_1``. The page shows one prompt and its two images (sides drawn per pair and annotator, recorded);
keys: left/right arrow, down arrow or t (tie), s (skip), u or Backspace (undo). Each click is on disk before the next
pair shows; stop and restart at any time. Several annotators (one ``--annotator`` each, at once or one after
another) label into one ``LABELS`` folder, one file each; ``LABELS`` is a Pick-a-Pic dataset. Storage and safety:
``visalign.evaluation.labeling``. ``--agreement`` prints every two annotators' agreement and, with ``--scorer``, each
annotator's agreement with the scorer, both under Pick-a-Pic's protocol (reward-scorers.md §1.7).
"""

from __future__ import annotations

import argparse
import getpass
import json
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path

from visalign.cli.score import add_scorer_arguments, build_scorer
from visalign.errors import InputError


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="visalign label", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.split("\n")[1:]))
    parser.add_argument("--out", required=True, type=Path, help="labels folder: one NAME.jsonl per annotator")
    parser.add_argument("--pairs", help="pair folder (chosen/, rejected/, captions.jsonl) or jsonl of prompt, "
                                        "image_0, image_1 (paths relative to the file)")
    parser.add_argument("--annotator", help="your name; it names your file in --out (default: the login name)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on; any other than loopback requires the printed token")
    parser.add_argument("--port", type=int, default=8765, help="port to listen on (0: any free port)")
    parser.add_argument("--token", help="access token (default: a random one when --host is not loopback)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the left/right order of each pair's images")
    agreement = parser.add_argument_group("agreement (--agreement)")
    agreement.add_argument("--agreement", action="store_true",
                           help="report inter-annotator agreement (and with --scorer, agreement with a scorer)")
    agreement.add_argument("--tie-threshold", type=float, default=0.0,
                           help="scorer predicts a tie when |p0 - p1| <= X (Pick-a-Pic protocol)")
    agreement.add_argument("--report", type=Path, help="also write the agreement report as JSON here")
    add_scorer_arguments(agreement, required=False)
    return parser


def serve(args: argparse.Namespace) -> int:
    from visalign.evaluation.labeling import LOOPBACK_HOSTS, LabelServer, LabelSession, load_label_pairs

    if args.pairs is None:
        raise InputError("--pairs is required to label (or pass --agreement to report on --out)")
    annotator = args.annotator or getpass.getuser()
    token = args.token or (None if args.host in LOOPBACK_HOSTS else secrets.token_urlsafe(16))
    pairs = load_label_pairs(args.pairs)
    session = LabelSession(pairs, args.out, annotator, seed=args.seed)
    try:
        try:
            server = LabelServer(session, args.host, args.port, token)
        except OSError as err:
            raise InputError(f"--host {args.host} --port {args.port}: cannot listen there ({err.strerror}); pass "
                             "another --port (0 picks a free one)") from None
        state = session.state()
        print(f"visalign label: {annotator}: {state['decided']} of {state['total']} pairs done; labels in "
              f"{session.rows_path}", flush=True)
        print(f"open {server.url()}  (Ctrl-C to stop; every click is already saved)", flush=True)
        with server:
            try:
                server.serve_forever()
            except KeyboardInterrupt:
                pass
    finally:
        session.close()
    state = session.state()
    print(f"stopped: {state['labelled']} labelled, {state['decided'] - state['labelled']} skipped, "
          f"{state['total'] - state['decided']} left")
    return 0


def agreement(args: argparse.Namespace) -> int:
    from reward_models.agreement import evaluate_agreement
    from visalign.evaluation.labeling import annotator_agreement, read_labels

    if args.report is not None and args.report.suffix != ".json":
        raise InputError(f"--report {args.report} must end in .json")
    if args.report is not None and args.report.resolve().parent == args.out.resolve():
        raise InputError(f"--report {args.report}: write it outside {args.out}, which must hold only label files")
    labels = read_labels(args.out)
    report = {"annotators": {name: len(rows) for name, rows in labels.items()},
              "inter_annotator": annotator_agreement(labels), "protocol": "pickapic"}
    lines = [f"{name}: {count} labels" for name, count in report["annotators"].items()]
    lines += [f"agreement {pair}: {100 * r['agreement']:.1f}% over {r['pairs']} shared pairs"
              for pair, r in report["inter_annotator"].items()]
    if len(labels) > 1 and not report["inter_annotator"]:
        lines.append("no pair was labelled by two annotators")
    if args.scorer is not None:
        scorer = build_scorer(args)
        report["scorer"] = {"name": scorer.info.name, "scale": scorer.info.formula,
                            "tie_threshold": args.tie_threshold, "annotators": {}}
        for name, rows in labels.items():
            try:
                result = evaluate_agreement(scorer, rows, "pickapic", image_root=args.out,
                                            tie_threshold=args.tie_threshold, batch_size=args.batch_size,
                                            num_workers=args.num_workers)
            except (ValueError, KeyError, FileNotFoundError) as err:
                raise InputError(f"--scorer {args.scorer} on {args.out}/{name}.jsonl: {err}") from None
            report["scorer"]["annotators"][name] = {"agreement": result.accuracy, "pairs": result.count,
                                                    "nan_predictions": result.nan_predictions}
            lines.append(f"{name} vs scorer {scorer.info.name}: {100 * result.accuracy:.1f}% over {result.count} "
                         f"pairs (tie threshold {args.tie_threshold:g})")
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if not args.agreement and args.scorer is not None:
        print("visalign label: error: --scorer applies to --agreement only", file=sys.stderr)
        return 2
    return agreement(args) if args.agreement else serve(args)


if __name__ == "__main__":
    raise SystemExit(main())
