"""Beyond-the-paper studies (docs/studies.md): iterative linearisation, data-dependent NTK, parent/child spawning with the
error barrier, and kernel distance/velocity for every optimiser.

* ``revgn_cli.optim.linearised`` — the ``optimizer=linearised`` stepper (the studies' training algorithm).
* ``revgn_cli.studies.spawn`` — the parent/child pipeline behind ``revgn study spawn`` (writes barriers.parquet).
* ``revgn_cli.studies.figures`` — the four study figures (``revgn plot <name>``) and their summary tables.
* ``revgn_cli.studies.commands`` — ``revgn study list | run | spawn``.
"""
