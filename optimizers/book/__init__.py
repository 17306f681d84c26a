"""Helpers shared by the book's chapters.

The chapters derive each optimizer and implement it in NumPy themselves; what they share lives
here, written once:

* :mod:`optimizers.book.problems` -- test objectives (ill-conditioned quadratics, Rosenbrock,
  Beale, noisy least squares) that accept NumPy arrays *and* torch tensors, with analytic
  gradients, plus small datasets built from what scikit-learn ships (no downloads).
* :mod:`optimizers.book.run` -- loops that record the trajectory of a NumPy update rule or of a
  ``torch.optim.Optimizer`` on the same problem, so a chapter can ``assert_allclose`` the two.
* :mod:`optimizers.book.plot` -- contour plots with trajectories and loss curves. It is the only
  module that imports matplotlib, and nothing imports it implicitly: ``import optimizers`` never
  needs matplotlib.
"""
