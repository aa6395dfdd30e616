"""A Linux jail built in layers: namespaces, empty root, privileges, rlimits, seccomp.

`sandbox` never imports `titus`; any daemon can use it.
"""
