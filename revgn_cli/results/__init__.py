"""Results on disk: run directories (store) and the one reader plots use (loader)."""
from revgn_cli.results.loader import load_runs, read_config, run_summaries
from revgn_cli.results.store import ROW_KEYS, RunDir, StoreError, iter_run_dirs

__all__ = ["load_runs", "read_config", "run_summaries", "RunDir", "StoreError", "iter_run_dirs", "ROW_KEYS"]
