"""Benchmarks behind ``python -m embtab bench``.

Every module in this package whose name ends in ``_cases`` provides ``cases(config) -> list[Case]``;
the runner discovers them, checks each case's result against its baseline, then times both.
"""
