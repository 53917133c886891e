"""Membership-inference attacks, audit metrics and the audit report.

Importing this package registers every attack.
"""

from dpbench.attacks import image, loss, mink, minkpp, reference, zlib  # noqa: F401
