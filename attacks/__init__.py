"""Membership-inference attacks, audit metrics and the audit report."""
