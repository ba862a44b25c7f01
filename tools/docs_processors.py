"""nbdev's notebook processors as tools/build_docs.py runs them to make the docs' `_proc/`.

A module of its own because nbdev's worker processes import the processor class by name.
"""
import ast

from nbdev import processors as P


class exec_show_docs_imports_only(P.exec_show_docs):
    """nbdev's `exec_show_docs`, except that a cell mixing imports with other code has only its imports run.

    nbdev runs exported cells, `show_doc` cells and every cell with an import to make `show_doc`
    output; a test cell that also imports something (nbdev warns: "Found cells containing imports and
    other code") would be run whole, out of order: it fails on names from cells that are not run, and
    may train or launch processes. Its imports are all `show_doc` can need.
    """
    def __call__(self, cell):
        if not self.nb.has_docs_ or not hasattr(self, 'k'): return
        fm = getattr(self.nb, 'frontmatter_', {})
        if P.str2bool(fm.get('skip_showdoc', False)): return
        trees = cell.parsed_() if cell.cell_type == 'code' and P.cell_lang(cell) == 'python' and cell.source else None
        mixed = (trees and not cell.directives_.keys() & {'export', 'exports', 'exporti', 'exec_doc'}
                 and not P._show_docs(trees) and P._ast_contains(trees, (ast.Import, ast.ImportFrom))
                 and P._ast_contains(trees, (ast.Expr, ast.Assign)))
        if not mixed:
            if P._do_eval(cell): self.k.cell(cell)
        elif cell.directives_.get('eval:', [''])[0].lower() != 'false':
            imports = [ast.unparse(t) for t in trees if isinstance(t, (ast.Import, ast.ImportFrom))]
            if imports: self.k.run('\n'.join(imports))
        if self.k.exc:
            title = fm.get('title', '')
            raise Exception(f"Error{' in notebook: ' + title if title else ''} in cell {cell.idx_} :\n{cell.source}") from self.k.exc


class SafeFilterDefaults(P.FilterDefaults):
    "nbdev's notebook processors for the docs, with `exec_show_docs_imports_only`; nbdev's workers find it by name."
    def base_procs(self):
        return [exec_show_docs_imports_only if p is P.exec_show_docs else p for p in super().base_procs()]
