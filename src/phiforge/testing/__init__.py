"""Test infrastructure that ships with the package (real local servers, fault injection).

Kept in the package, not under tests/, so benchmarks and downstream users can use it
too. Nothing here is imported by the library itself.
"""
