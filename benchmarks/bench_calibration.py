"""What a decision rule from `sgre_calibrate` gains, measured honestly (issue 23 §4).

    python benchmarks/bench_calibration.py --model EXP_OR_MODEL_DIR [--data-dir D] [--folds 5] [--rare 4] [--quick]

The model (an experiment folder from `sgre_train`, or a model folder from `sgre_export`) scores the test split of its
dataset (`--data-dir`, default the experiment's); the rule is cross-validated exactly as `sgre_calibrate` does it (folds
split by image, fitted on k-1 folds, measured on the held-out one, figures pooled over all held-out images), and the
script prints, as Markdown tables:

1. the paper's threshold figures (CP, CR, CF1, OP, OR, OF1, in %) of the model's 0.5 rule on raw scores, of calibrated
   scores with one global threshold and of the tuned per-class rule, with the ECE (15 bins) and Brier score before and
   after calibration — for temperature scaling and for per-class Platt scaling;
2. what the shrinkage of rare classes' thresholds toward the global threshold does: CF1, OF1 and the F1 of the `--rare`
   classes with the fewest positives in the split, cross-validated, with the 0.5 rule and with the tuned rule for
   m = 0 (no shrinkage), 3 (`sgre_calibrate`'s default) and 10; and those classes' thresholds fitted on all images.

These figures are functions of the model's scores and the split alone: they do not depend on the machine or its load.
`--quick` uses the first 200 test images and 3 folds, to check that the script runs.
"""
import argparse, os, sys, time
from pathlib import Path

os.environ.setdefault('HF_HUB_OFFLINE', '1')
import numpy as np


def _pct(v): return f'{100 * v:.2f}'


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--model', required=True, help='experiment folder (sgre_train) or model folder (sgre_export)')
    ap.add_argument('--data-dir', help="the prepared dataset (default: the experiment's)")
    ap.add_argument('--folds', type=int, default=5)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--rare', type=int, default=4, help='per-class columns for this many classes with the fewest positives')
    ap.add_argument('--prior', type=float, default=3, help="sgre_calibrate's default m of the shrinkage (compared with 0 and 10)")
    ap.add_argument('--batch-size', type=int, default=64)
    ap.add_argument('--quick', action='store_true', help='200 test images, 3 folds: checks that the script runs')
    a = ap.parse_args(argv)
    from sgre.calibration import _split_targets, cross_validate, fit_rule
    from sgre.data import read_prepared
    from sgre.deploy import _load_any, _predictor, _score
    from sgre.experiment import Run
    t0 = time.time()
    m = _load_any(a.model, raw=True)
    data_dir = Path(a.data_dir or (m.cfg['data_dir'] if isinstance(m, Run) else ''))
    if not str(data_dir) or not (data_dir / 'label.txt').is_file(): sys.exit('pass --data-dir: the prepared dataset of the model')
    data = read_prepared(data_dir)
    assert data.labels == m.labels, 'the dataset and the model have different labels'
    Y, G, _ = _split_targets(data, 'test', m.labels)
    items = [f for f, _ in data.test]
    folds = a.folds
    if a.quick: items, Y, G, folds = items[:200], Y[:200], (G[:200] if G is not None else None), 3
    read, _, skipped, logits = _score(_predictor(m, raw=True), items, a.batch_size)
    assert not skipped, skipped
    labels, C = m.labels, len(m.labels)
    print(f'{Path(a.model).resolve().name} on the test split of {data_dir.resolve().name}: {len(items)} images, {C} labels; '
          f'{folds}-fold cross-validation by image (seed {a.seed}), figures pooled over the held-out images '
          f'(scored in {time.time() - t0:.0f} s)\n')
    print('| rule | CP | CR | CF1 | OP | OR | OF1 | ECE | Brier |\n|---|---|---|---|---|---|---|---|---|')
    cvs = {}
    for platt in (False, True):
        cv = cvs[platt] = cross_validate(logits, Y, G, folds=folds, seed=a.seed, platt=platt)
        name = 'Platt (per class)' if platt else 'temperature'
        rows = [('raw scores, threshold 0.5', cv['raw'], cv['ece_before'], cv['brier_before'])] if not platt else []
        rows += [(f'{name}, global threshold', cv['global'], cv['ece_after'], cv['brier_after']),
                 (f'{name}, per-class thresholds', cv['tuned'], cv['ece_after'], cv['brier_after'])]
        for r, m_, e, b in rows:
            print(f'| {r} | ' + ' | '.join(_pct(m_[k]) for k in ('CP', 'CR', 'CF1', 'OP', 'OR', 'OF1')) + f' | {e:.4f} | {b:.4f} |')
    temps = cvs[False]['temperatures']
    print(f'\ntemperature of each fold: {", ".join(f"{t:.3f}" for t in temps)}')
    priors = sorted({0, a.prior, 10})
    cv_m = {m_: cross_validate(logits, Y, G, folds=folds, seed=a.seed, prior=m_) for m_ in priors}
    final = {m_: fit_rule(logits, Y, G, labels, prior=m_) for m_ in priors}
    P = np.array(final[a.prior].info['classes']['positives'])
    rare = [int(c) for c in np.argsort(P, kind='stable')[:a.rare]]
    print(f'\nthe shrinkage toward the global threshold, t_c = (P_c t_c* + m t_g) / (P_c + m), temperature scaling '
          f'(default m = {a.prior:g}; cross-validated, in %):\n')
    print('| m | CF1 | OF1 | ' + ' | '.join(f'F1 {labels[c]} ({P[c]} positives)' for c in rare) + ' |\n|---|---|---|' + '---|' * len(rare))
    print('| (raw scores, 0.5) | ' + _pct(cvs[False]['raw']['CF1']) + ' | ' + _pct(cvs[False]['raw']['OF1']) + ' | ' +
          ' | '.join(_pct(cvs[False]['per_class']['raw']['f1'][c]) for c in rare) + ' |')
    for m_ in priors:
        cv = cv_m[m_]
        print(f'| {m_:g} | {_pct(cv["tuned"]["CF1"])} | {_pct(cv["tuned"]["OF1"])} | ' +
              ' | '.join(_pct(cv['per_class']['tuned']['f1'][c]) for c in rare) + ' |')
    print(f'\nthresholds of those classes fitted on all {len(items)} images (global threshold {final[a.prior].global_threshold:.3f}):\n')
    print('| m | ' + ' | '.join(labels[c] for c in rare) + ' |\n|---|' + '---|' * len(rare))
    for m_ in priors: print(f'| {m_:g} | ' + ' | '.join(f'{final[m_].thresholds[c]:.3f}' for c in rare) + ' |')

if __name__ == '__main__':
    main()
