"""ncprop: the optimizer decides whether Neural Collapse can emerge.

Subpackages:

- :mod:`ncprop.optim`: the optimizer family (SGD, SGDW, Adam, AdamW, SignGD, SignGDW, Signum,
  SignumW, Lion, the Adam/AdamW mix) as one composable core, and the optimizer registry.
- :mod:`ncprop.metrics`: Neural Collapse metrics NC0-NC4, in memory and streaming.
- :mod:`ncprop.theory`: the lemma and claims T1-T6 as executable predictions.
- :mod:`ncprop.models`, :mod:`ncprop.data`: backbones with a linear classifier, offline data.
- :mod:`ncprop.batched`: many toy runs trained as one batch of tensors.
- :mod:`ncprop.experiments`: runs, sweeps, the results database and reports.
"""

__version__ = "0.1.0"
