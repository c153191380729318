"""Answer checking for synthetic data, Pivotal Token Search and evaluation.

* :mod:`~phiforge.verify.sandbox`: run untrusted Python in a jail (namespaces, rlimits).
* :mod:`~phiforge.verify.code`: solutions vs tests, in the sandbox.
* :mod:`~phiforge.verify.math`: final-answer extraction and symbolic equivalence.
* :mod:`~phiforge.verify.choice`: multiple-choice letter extraction and scoring.
* :mod:`~phiforge.verify.oracle`: the ``Oracle`` / ``Verdict`` interface they share (PTS, §4.3).

Nothing is imported eagerly: ``import phiforge.verify`` costs nothing.
"""
