"""Membership-inference attacks, audit metrics and the audit report.

Importing this package registers every attack.
"""

from dpbench.attacks import image, lira, loss, mink, minkpp, reference, rmia, zlib  # noqa: F401
