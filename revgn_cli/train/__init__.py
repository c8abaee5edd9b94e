"""The training loop, its runtime set-up, and the job runner shared by `revgn train` and sweeps."""
