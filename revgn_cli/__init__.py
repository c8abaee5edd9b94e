"""revgn: exact, tractable Gauss-Newton optimisation in reversible MLPs — an experiment suite."""
__version__ = "0.1.0"
