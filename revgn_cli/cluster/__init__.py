"""Sweeps on a SLURM cluster: the job side (``job``) and the submitting side (``launcher``)."""
