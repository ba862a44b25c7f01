"""Check that the committed notebooks and README.md carry no build noise.

    python tools/check_outputs.py               # this repository
    python tools/check_outputs.py --root DIR    # another tree (the tests use this)

Notebook outputs are published: the docs site shows them and README.md is made from nbs/index.ipynb.
Warnings that happened to be printed while a notebook ran, error tracebacks and the paths of the
machine it ran on (its site-packages, its home or temporary folders) say nothing to a reader and change
from machine to machine. So this fails, naming each offence, when

- a notebook output (any notebook under nbs/, skipping the folders the docs build skips) is a stderr
  stream or an error;
- a notebook output's text (stream text, text/* data, tracebacks; not images) names a machine path;
- README.md has an empty fenced code block (what a hidden-source cell used to leave there), or names
  a machine path.

Cells are counted from 0, in the notebook as saved.
"""
import argparse, json, re, sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_docs import SKIP_FOLDERS  # noqa: E402  (the docs build's own list of folders that are not docs)

ROOT = Path(__file__).resolve().parents[1]
# A path of the machine the notebook ran on: an absolute path that starts where an absolute path can start
# (so `https://host/home/` is not one), or a virtual environment's or Python's library folders.
MACHINE_PATH = re.compile(r'''site-packages|dist-packages|(?:^|(?<=[\s'"`(=:,\[>]))(?:/work/|/root/|/home/|/Users/|/tmp/tmp|/tmp/ipykernel_'''
                          r'''|/usr/(?:local/)?lib/python)|(?:^|(?<=[\s'"`(=:,\[>/]))\.venv/''', re.M)
_ANSI = re.compile(r'\x1b\[[0-9;]*[A-Za-z]')


def _text(value) -> str:
    return ''.join(value) if isinstance(value, list) else str(value)


def _snippet(text: str, m) -> str:
    "The line of `text` that holds the match `m` (or the first line), shortened around the match."
    start = text.rfind('\n', 0, m.start()) + 1 if m else 0
    line = text[start:].split('\n', 1)[0]
    at = max(0, m.start() - start - 40) if m else 0
    part = ('...' if at else '') + line[at:at + 120].strip() + ('...' if len(line) > at + 120 else '')
    return repr(part)


def output_offence(out: dict) -> str | None:
    "What is wrong with one notebook output, if anything."
    kind = out.get('output_type')
    if kind == 'stream': texts = [_text(out.get('text', ''))]
    elif kind == 'error': texts = [f"{out.get('ename', '')}: {_text(out.get('evalue', ''))}", *map(_text, out.get('traceback', []))]
    else: texts = [_text(v) for k, v in out.get('data', {}).items() if k.startswith('text/')]
    text = _ANSI.sub('', '\n'.join(texts))   # tracebacks are coloured
    m = MACHINE_PATH.search(text)
    what = ('stderr output' if kind == 'stream' and out.get('name') == 'stderr' else
            'error output' if kind == 'error' else 'output' if m else None)
    if what is None: return None
    return what + (f' naming a machine path ({m.group(0)})' if m else '') + ': ' + _snippet(text, m)


def notebooks(root: Path) -> list[Path]:
    "The notebooks under root/nbs, as the docs build finds them."
    skip = re.compile(SKIP_FOLDERS)
    nbs = root / 'nbs'
    return sorted(p for p in nbs.rglob('*.ipynb') if not any(skip.search(part) for part in p.relative_to(nbs).parts[:-1]))


def readme_offences(readme: Path) -> list[str]:
    "Empty fenced code blocks and machine paths in README.md, by line (counted from 1)."
    found, fence, empty = [], None, True
    for n, line in enumerate(readme.read_text(encoding='utf-8').splitlines(), 1):
        if fence is None and line.startswith('```'): fence, empty = n, True
        elif fence is not None and line.strip() == '```':
            if empty: found.append(f'README.md line {fence}: empty code block')
            fence = None
        elif line.strip(): empty = False
        m = MACHINE_PATH.search(line)
        if m: found.append(f'README.md line {n}: names a machine path ({m.group(0)}): {_snippet(line, m)}')
    return found


def check(root: Path = ROOT) -> tuple[list[str], str]:
    "The offences found under `root` (one line each), and a summary of what was checked."
    offences, n_out = [], 0
    nbs = notebooks(root)
    for nb_path in nbs:
        name = nb_path.relative_to(root).as_posix()
        try: cells = json.loads(nb_path.read_text(encoding='utf-8'))['cells']
        except (ValueError, KeyError) as e:
            offences.append(f'{name}: not a notebook ({e})'); continue
        for i, cell in enumerate(cells):
            for out in cell.get('outputs', []):
                n_out += 1
                what = output_offence(out)
                if what: offences.append(f'{name} cell {i}: {what}')
    readme = root / 'README.md'
    if readme.exists(): offences += readme_offences(readme)
    return offences, f'{len(nbs)} notebooks ({n_out} outputs)' + (' and README.md' if readme.exists() else '')


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--root', type=Path, default=ROOT, help='the repository to check (default: this one)')
    a = ap.parse_args(argv)
    offences, checked = check(a.root.resolve())
    if offences:
        print('\n'.join(offences))
        sys.exit(f'check_outputs: {len(offences)} problem(s) in {checked}: clear stderr output and machine paths '
                 'at their source, run the notebook again, and regenerate README.md (python tools/build_docs.py --readme-only).')
    print(f'check_outputs: OK, {checked}: no stderr or error outputs, machine paths or empty code blocks.')


if __name__ == '__main__':
    main()
